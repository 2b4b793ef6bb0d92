package engine

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/cmx-agent/cmx-agent/config"
)

func newTestEngine(t *testing.T, dialect string, eps ...config.Endpoint) *Engine {
	t.Helper()
	dir := t.TempDir()
	for i := range eps {
		if eps[i].Output == "" {
			eps[i].Output = filepath.Join(dir, "out", eps[i].Key()+".json")
		}
	}
	cfg := &config.Config{
		Kaa:       config.Kaa{AppVersion: "app", Extension: "cmx", Dialect: dialect},
		Agent:     config.Agent{StateDir: filepath.Join(dir, "state"), MaxPayload: 1 << 16},
		Endpoints: eps,
	}
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestReload_CMP7FiltersFollowTheEndpoints(t *testing.T) {
	t.Parallel()
	def := func(tok string) config.Endpoint { return config.Endpoint{Token: tok} }
	named := func(tok, name string) config.Endpoint { return config.Endpoint{Token: tok, Name: name} }
	cases := []struct {
		name            string
		old, new        []config.Endpoint
		sub, unsub, req []string
	}{
		{"a name added beside the default is requested, its topics already covered",
			[]config.Endpoint{def("gw")}, []config.Endpoint{def("gw"), named("gw", "x")},
			nil, nil, []string{"gw/x"}},
		{"a default added beside a name takes over its filter",
			[]config.Endpoint{named("gw", "x")}, []config.Endpoint{def("gw"), named("gw", "x")},
			[]string{"kp1/app/cmx/gw/config/json/#"}, []string{"kp1/app/cmx/gw/config/json/x/#"}, []string{"gw"}},
		{"the default removed beside a name gives the name its own filter",
			[]config.Endpoint{def("gw"), named("gw", "x")}, []config.Endpoint{named("gw", "x")},
			[]string{"kp1/app/cmx/gw/config/json/x/#"}, []string{"kp1/app/cmx/gw/config/json/#"}, nil},
		{"nothing changed", []config.Endpoint{def("gw"), named("gw", "x")}, []config.Endpoint{def("gw"), named("gw", "x")},
			nil, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEngine(t, config.DialectCMP7, tc.old...)
			dir := filepath.Dir(filepath.Dir(e.endpointList()[0].config().Output))
			for i := range tc.new {
				tc.new[i].Output = filepath.Join(dir, "out", tc.new[i].Key()+".json")
			}
			ch := e.Reload(tc.new)
			if !slices.Equal(ch.Subscribe, tc.sub) || !slices.Equal(ch.Unsubscribe, tc.unsub) || !slices.Equal(ch.Request, tc.req) {
				t.Errorf("changes = %+v, want subscribe %v unsubscribe %v request %v", ch, tc.sub, tc.unsub, tc.req)
			}
		})
	}
}
