package apply

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeTemplate(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bridge.ini.tmpl")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRender_INIWithNumbersAsWritten(t *testing.T) {
	tmpl := writeTemplate(t, `{{range .}}[{{.name}}]
address = {{.address}}
scale = {{.scale}}
tags = {{join "," .tags}}
label = {{quote (default "none" (index . "label"))}}
{{end}}`)
	body := []byte(`[{"name":"pump","address":40001,"scale":0.10000000000000001,"tags":["a",1e6],"label":"x\"y"},
	              {"name":"fan","address":12345678901234567890,"scale":1000000,"tags":[]}]`)
	got, err := Render(tmpl, body)
	if err != nil {
		t.Fatal(err)
	}
	want := `[pump]
address = 40001
scale = 0.10000000000000001
tags = a,1e6
label = "x\"y"
[fan]
address = 12345678901234567890
scale = 1000000
tags = 
label = "none"
`
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRender_MissingKeyIsAnError(t *testing.T) {
	tmpl := writeTemplate(t, "port = {{.prot}}\n")
	_, err := Render(tmpl, []byte(`{"port": 502}`))
	if err == nil || !strings.Contains(err.Error(), `map has no entry for key "prot"`) || !strings.Contains(err.Error(), "bridge.ini.tmpl:1") {
		t.Fatalf("err = %v, want the missing key with file and line", err)
	}
}

func TestRender_ParseErrorNamesTheLine(t *testing.T) {
	tmpl := writeTemplate(t, "a\n{{if .x}}\n")
	_, err := Render(tmpl, []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "bridge.ini.tmpl:") {
		t.Fatalf("err = %v", err)
	}
}

func TestRender_NoWayOutOfTheData(t *testing.T) {
	for _, src := range []string{`{{env "HOME"}}`, `{{exec "id"}}`, `{{readFile "/etc/passwd"}}`, `{{template "x"}}`} {
		tmpl := writeTemplate(t, src)
		if out, err := Render(tmpl, []byte(`{}`)); err == nil {
			t.Errorf("%s rendered %q, want an error", src, out)
		}
	}
}

func TestRender_BodyNotJSON(t *testing.T) {
	tmpl := writeTemplate(t, "x")
	if _, err := Render(tmpl, []byte(`{`)); err == nil {
		t.Fatal("want an error")
	}
}
