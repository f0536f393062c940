package config

import "testing"

// BenchmarkDecodeDefault is what loading the embedded default costs
// every CLI process (Default decodes it once per process).
func BenchmarkDecodeDefault(b *testing.B) {
	for b.Loop() {
		c := new(Config)
		if err := decode(c, defaultTOML, "default.toml"); err != nil {
			b.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
