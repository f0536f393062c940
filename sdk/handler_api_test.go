package sdk_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"strings"
	"testing"
)

// Package sdk re-exports every exported name of sdk/handler: an author
// imports sdk alone, and what the lean package gains must not be missing
// from the author's package.
func TestSDKReExportsHandler(t *testing.T) {
	lean := exported(t, "handler")
	ours := exported(t, ".")
	if len(lean) < 15 {
		t.Fatalf("sdk/handler: implausibly few exported names: %v", lean)
	}
	for name := range lean {
		if !ours[name] {
			t.Errorf("sdk does not re-export handler.%s", name)
		}
	}
}

// exported lists the exported top-level names declared in dir's non-test
// files (functions without a receiver, types, constants, variables).
func exported(t *testing.T, dir string) map[string]bool {
	t.Helper()
	pkgs, err := parser.ParseDir(token.NewFileSet(), dir, func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := make(map[string]bool)
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			for _, decl := range f.Decls {
				switch d := decl.(type) {
				case *ast.FuncDecl:
					if d.Recv == nil && d.Name.IsExported() {
						names[d.Name.Name] = true
					}
				case *ast.GenDecl:
					for _, spec := range d.Specs {
						switch s := spec.(type) {
						case *ast.TypeSpec:
							if s.Name.IsExported() {
								names[s.Name.Name] = true
							}
						case *ast.ValueSpec:
							for _, n := range s.Names {
								if n.IsExported() {
									names[n.Name] = true
								}
							}
						}
					}
				}
			}
		}
	}
	return names
}
