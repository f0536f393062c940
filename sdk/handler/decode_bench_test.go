package handler

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

// Benchmarks of DecodeStrict on the payloads of warm requests: a procfs
// read, a mount batch, a 64 KiB xattr value.

type benchRead struct {
	Path   string `json:"path"`
	Offset int64  `json:"offset"`
	Len    int64  `json:"len"`
}

type benchEntry struct {
	Source string   `json:"source"`
	Target string   `json:"target"`
	FSType string   `json:"fstype"`
	Flags  []string `json:"flags"`
	Data   string   `json:"data"`
}

type benchBatch struct {
	Mounts []benchEntry `json:"mounts"`
}

type benchXattr struct {
	Path  string `json:"path"`
	Name  string `json:"name"`
	Value []byte `json:"value"`
}

func benchDecode[T any](b *testing.B, payload string) {
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	p := []byte(payload)
	for b.Loop() {
		var v T
		if err := DecodeStrict(p, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeStrict(b *testing.B) {
	b.Run("read", func(b *testing.B) {
		benchDecode[benchRead](b, `{"path":"/proc/sys/kernel/hostname","offset":0,"len":0}`)
	})
	b.Run("mounts8", func(b *testing.B) {
		e := `{"source":"tmp","target":"/mnt/a/b/c","fstype":"tmpfs","flags":["nosuid","nodev"],"data":"size=1m,mode=0755"}`
		benchDecode[benchBatch](b, `{"mounts":[`+strings.Repeat(e+",", 7)+e+`]}`)
	})
	b.Run("xattr64k", func(b *testing.B) {
		v := base64.StdEncoding.EncodeToString(make([]byte, 64<<10))
		benchDecode[benchXattr](b, `{"path":"/data/f","name":"user.x","value":"`+v+`"}`)
	})
}

func BenchmarkScanOnly(b *testing.B) {
	v := base64.StdEncoding.EncodeToString(make([]byte, 64<<10))
	p := []byte(`{"path":"/data/f","name":"user.x","value":"` + v + `"}`)
	sh := shapeOf(reflect.TypeFor[*benchXattr]())
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		sc := scanner{data: p}
		if _, err := sc.value(0, sh, 0); err != nil {
			b.Fatal(err)
		}
	}
}
