package config

import (
	"reflect"
	"strings"
)

// Keys returns the keys a configuration file may hold, table by table: "" for the top level
// (broker, kaa, agent, endpoint), then each table's own keys in the order of the types above.
// They are read from the toml tags, so the manual page's drift test and the support bundle's
// redaction follow any key added here.
func Keys() map[string][]string {
	keys := map[string][]string{}
	root := reflect.TypeFor[Config]()
	for i := range root.NumField() {
		f := root.Field(i)
		name := tomlName(f)
		if name == "" {
			continue
		}
		keys[""] = append(keys[""], name)
		t := f.Type
		if t.Kind() == reflect.Slice {
			t = t.Elem() // [[endpoint]]
		}
		if t.Kind() != reflect.Struct {
			continue
		}
		for j := range t.NumField() {
			if n := tomlName(t.Field(j)); n != "" {
				keys[name] = append(keys[name], n)
			}
		}
	}
	return keys
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "-" {
		return ""
	}
	return name
}
