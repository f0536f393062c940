// Command nsplug-bench runs nsplug's benchmark suite in one process and one
// run (see bench/README.md): it prints a table with the target ratios and
// writes bench/results.json. `make bench` and `make bench BENCH=quick` run
// it.
//
//	nsplug-bench [-mode quick|full] [-out FILE] [-bare PATH] [-nsplug PATH] [-profile DIR] [-only PHASES]
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/nsplug/nsplug/bench"
	"github.com/nsplug/nsplug/plugins/builtin"
)

func main() {
	builtin.Main() // the core re-executes this binary to serve procfs
	mode := flag.String("mode", "full", "quick (within two minutes on two cores) or full")
	out := flag.String("out", "bench/results.json", "where to write the results (empty: nowhere)")
	bare := flag.String("bare", "", "a built bench/bareplugin binary (default: built with the go command)")
	cli := flag.String("nsplug", "", "a built bin/nsplug, for the standalone CLI case (default: built with the go command)")
	prof := flag.String("profile", "", "write CPU profiles of the core (warm.pprof, cold.pprof) to this directory")
	only := flag.String("only", "", "comma-separated phases to run (default all): "+strings.Join(bench.Phases, ","))
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	var phases []string
	if *only != "" {
		phases = strings.Split(*only, ",")
	}
	_, err := bench.Run(bench.Config{
		Mode:        *mode,
		Out:         os.Stdout,
		Progress:    os.Stderr,
		ResultsPath: *out,
		BarePlugin:  *bare,
		NsplugCLI:   *cli,
		ProfileDir:  *prof,
		Only:        phases,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "nsplug-bench:", err)
		os.Exit(1)
	}
}
