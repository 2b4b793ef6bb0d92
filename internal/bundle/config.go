package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cmx-agent/cmx-agent/config"
)

// configFile is the agent's configuration file as the bundle sees it: read and parsed as plain
// TOML, valid or not. An operator asks for help precisely when the file is broken, and the running
// agent may still be using an older valid one, so the bundle does not need it to load.
type configFile struct {
	path    string // absolute when it could be made so
	dir     string // relative paths in the file are resolved against it, as the config package does
	data    []byte
	readErr error
	raw     map[string]any
	tomlErr error
	cfg     *config.Config // nil when the file does not load
	loadErr error
}

func readConfig(path string) *configFile {
	c := &configFile{path: path}
	if abs, err := filepath.Abs(path); err == nil {
		c.path = abs
	}
	c.dir = filepath.Dir(c.path)
	c.data, c.readErr = os.ReadFile(path)
	if c.readErr != nil {
		return c
	}
	_, c.tomlErr = toml.Decode(string(c.data), &c.raw)
	c.cfg, c.loadErr = config.Parse(c.path, c.data)
	return c
}

// str returns a string key of a table of the raw file.
func (c *configFile) str(table, key string) string {
	t, _ := c.raw[table].(map[string]any)
	s, _ := t[key].(string)
	return s
}

// resolve makes a path of the file absolute as the config package does; "" stays "".
func (c *configFile) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

func (c *configFile) endpoints() []map[string]any {
	eps, _ := c.raw["endpoint"].([]map[string]any)
	return eps
}

// secrets returns what must never appear in the bundle: the passwords in server URLs and the
// password file's content (the whole of it, without the trailing newline the agent drops, and
// each line). A password file that cannot be read cannot be scrubbed: the error says so.
func (c *configFile) secrets() ([]string, error) {
	out := serverPasswords(c.raw)
	p := c.resolve(c.str("broker", "password_file"))
	if p == "" {
		return out, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return out, err
	}
	defer f.Close()
	data, _ := io.ReadAll(io.LimitReader(f, 64<<10)) // the agent's own bound for a secret file
	out = append(out, string(data), strings.TrimRight(string(data), "\r\n"))
	for line := range strings.Lines(string(data)) {
		out = append(out, strings.TrimRight(line, "\r\n"))
	}
	return out, nil
}

// namedPath is a path the configuration names, with the key that names it.
type namedPath struct{ key, path string }

// view is what the bundle needs of the configuration, with the agent's defaults filled in.
type view struct {
	socket, stateDir string
	files            []namedPath // files read by the agent: credentials and templates
	outputs          []namedPath // key = endpoint key
}

func (c *configFile) view() view {
	v := view{
		socket:   c.resolve(c.str("agent", "socket")),
		stateDir: c.resolve(c.str("agent", "state_dir")),
	}
	if v.socket == "" {
		v.socket = config.DefaultSocket
	}
	if v.stateDir == "" {
		v.stateDir = config.DefaultStateDir
	}
	v.files = append(v.files, namedPath{"configuration", c.path})
	for _, k := range []string{"password_file", "ca_file", "cert_file", "key_file"} {
		if p := c.str("broker", k); p != "" {
			v.files = append(v.files, namedPath{"broker." + k, c.resolve(p)})
		}
	}
	for i, ep := range c.endpoints() {
		token, _ := ep["token"].(string)
		name, _ := ep["name"].(string)
		key := config.Endpoint{Token: token, Name: name}.Key()
		if key == "" {
			key = fmt.Sprintf("endpoint[%d]", i)
		}
		if p, _ := ep["template"].(string); p != "" {
			v.files = append(v.files, namedPath{key + " template", c.resolve(p)})
		}
		if p, _ := ep["output"].(string); p != "" {
			v.outputs = append(v.outputs, namedPath{key, c.resolve(p)})
		}
	}
	return v
}

// addConfig adds the redacted configuration and what `check` says of it.
func (b *builder) addConfig(c *configFile) {
	var check bytes.Buffer
	switch {
	case c.readErr != nil:
		b.note("the configuration file: %v", c.readErr)
		fmt.Fprintf(&check, "%s: cannot read: %v\n", c.path, c.readErr)
	case c.loadErr != nil:
		var probs config.Problems
		if errors.As(c.loadErr, &probs) {
			for _, p := range probs {
				fmt.Fprintln(&check, p.String())
			}
		} else {
			fmt.Fprintf(&check, "%s: %v\n", c.path, c.loadErr)
		}
	default:
		fmt.Fprintf(&check, "%s: %s\n", c.path, c.cfg.CheckLine())
	}
	if c.readErr == nil {
		b.addRedactedConfig(c)
	}
	b.add("check.txt", check.Bytes())
}

func (b *builder) addRedactedConfig(c *configFile) {
	if c.tomlErr != nil {
		// The parse error may quote the file; check.txt has the line, scrubbed.
		b.note("config.toml: the configuration file is not valid TOML, so it is left out (see check.txt)")
		return
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# %s as cmx-agent bundle redacted it: comments dropped, values of unknown keys\n", c.path)
	buf.WriteString("# and passwords in server URLs removed; files it names are described in files.txt.\n\n")
	enc := toml.NewEncoder(&buf)
	enc.Indent = ""
	if err := enc.Encode(redactConfig(c.raw)); err != nil {
		b.note("config.toml: %v", err)
		return
	}
	b.add("config.toml", buf.Bytes())
}
