package bundle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cmx-agent/cmx-agent/agent"
	"github.com/cmx-agent/cmx-agent/apply"
)

// ErrNoJournal is returned by Options.Journal where the system has no journal to read.
var ErrNoJournal = errors.New("journalctl not found")

func (b *builder) addVersion() {
	var s strings.Builder
	fmt.Fprintf(&s, "%s\nplatform: %s/%s\n", strings.TrimSpace(b.opt.Version), runtime.GOOS, runtime.GOARCH)
	if host, err := os.Hostname(); err == nil {
		fmt.Fprintf(&s, "host: %s\n", host)
	}
	if rel, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		fmt.Fprintf(&s, "kernel: %s\n", strings.TrimSpace(string(rel)))
	}
	fmt.Fprintf(&s, "bundle made: %s by uid %d\n", b.now.Format(time.RFC3339), os.Getuid())
	if bi, ok := debug.ReadBuildInfo(); ok {
		s.WriteString("\nbuild:\n" + bi.String())
	}
	b.add("version.txt", []byte(s.String()))
}

// describe says what a file is without reading it: mode, owner, size and time.
func describe(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "cannot stat: " + errText(err)
	}
	return fmt.Sprintf("%s %s %d bytes, modified %s", fi.Mode(), owner(fi), fi.Size(), fi.ModTime().UTC().Format(time.RFC3339))
}

// errText is an error without the path os adds, which the caller has printed already.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// owner is user:group of a file, by name where the names are known.
func owner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "?:?"
	}
	u, g := strconv.FormatUint(uint64(st.Uid), 10), strconv.FormatUint(uint64(st.Gid), 10)
	if x, err := user.LookupId(u); err == nil {
		u = x.Username
	}
	if x, err := user.LookupGroupId(g); err == nil {
		g = x.Name
	}
	return u + ":" + g
}

// addFiles describes the files the configuration names. Their content is never read here.
func (b *builder) addFiles(v view) {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMED BY\tPATH\tFILE")
	for _, f := range v.files {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.key, f.path, describe(f.path))
	}
	tw.Flush()
	b.add("files.txt", buf.Bytes())
}

// addStatus asks the running agent for its status over the local API (the agent holds the
// database, so this is the only way to its stored state) and reports whether one answered.
func (b *builder) addStatus(ctx context.Context, v view) (agent.Status, bool) {
	ctx, cancel := context.WithTimeout(ctx, b.opt.StatusTimeout)
	defer cancel()
	st, err := agent.NewAPIClient(v.socket).Status(ctx)
	if err != nil {
		b.add("status.txt", fmt.Appendf(nil, "cmx-agent status: %v\n", err))
		b.note("status.json: no agent answered on %s (see status.txt)", v.socket)
		return agent.Status{}, false
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		b.note("status.json: %v", err)
		return st, true
	}
	b.add("status.json", append(data, '\n'))
	return st, true
}

// addEndpoints lists, per endpoint, the applied configuration's id and hash as the agent stored
// them.
func (b *builder) addEndpoints(st agent.Status, ok bool) {
	var buf bytes.Buffer
	if !ok {
		buf.WriteString("no agent answered: the applied ids and hashes are in its database, which only the running agent reads\n")
		b.add("endpoints.txt", buf.Bytes())
		return
	}
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tAPPLIED ID\tAPPLIED SHA256\tAPPLIED AT\tLAST STATUS\tPENDING")
	for _, e := range st.Endpoints {
		id, hash, at := "-", "-", "-"
		if e.Applied {
			id, hash, at = orDash(e.AppliedID), orDash(e.AppliedHash), e.AppliedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", e.Key, id, hash, at, orDash(e.LastStatus), e.Pending)
	}
	tw.Flush()
	b.add("endpoints.txt", buf.Bytes())
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// addDatabase reports the state folder and agent.db from stat alone: the running agent holds the
// database's lock, and a bundle must not wait for it or disturb it.
func (b *builder) addDatabase(v view) {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "state_dir %s: %s\n", v.stateDir, describe(v.stateDir))
	db := filepath.Join(v.stateDir, "agent.db")
	fmt.Fprintf(&buf, "agent.db %s: %s\n", db, describe(db))
	entries, err := os.ReadDir(v.stateDir)
	if err != nil {
		fmt.Fprintf(&buf, "\ncannot list state_dir: %s\n", errText(err))
	} else {
		// Names, sizes and modes only: a moved-aside agent.db.corrupt-<time> shows here.
		buf.WriteString("\nin state_dir:\n")
		for _, e := range entries {
			fmt.Fprintf(&buf, "  %s: %s\n", e.Name(), describe(filepath.Join(v.stateDir, e.Name())))
		}
	}
	b.add("database.txt", buf.Bytes())
}

// addOutputs describes each endpoint's output with its sha256, compared with the applied hash the
// agent stored, and copies it only with --with-outputs: outputs are the devices' configurations and
// may hold their secrets.
func (b *builder) addOutputs(v view, st agent.Status, ok bool) {
	applied := map[string]string{}
	outputs := v.outputs
	for _, e := range st.Endpoints {
		applied[e.Key] = e.AppliedHash
		if !containsKey(outputs, e.Key) { // the running agent may know endpoints the file lost
			outputs = append(outputs, namedPath{e.Key, e.Output})
		}
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tOUTPUT\tFILE\tSHA256\tAS APPLIED")
	for i, o := range outputs {
		sum, err := apply.HashFile(o.path)
		if err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\n", o.key, o.path, describe(o.path))
			continue
		}
		var match string
		switch h := applied[o.key]; {
		case !ok:
			match = "unknown (no agent answered)"
		case h == "":
			match = "nothing applied"
		case h == sum:
			match = "yes"
		default:
			match = "no: changed since the agent applied it"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.key, o.path, describe(o.path), sum, match)
		if b.opt.WithOutputs {
			if data, err := os.ReadFile(o.path); err == nil {
				b.add(fmt.Sprintf("outputs/%d-%s", i+1, filepath.Base(o.path)), data)
			}
		}
	}
	tw.Flush()
	b.add("outputs.txt", buf.Bytes())
}

func containsKey(list []namedPath, key string) bool {
	for _, p := range list {
		if p.key == key {
			return true
		}
	}
	return false
}

// addJournal adds the unit's last journal lines, or says why there are none.
func (b *builder) addJournal(ctx context.Context) {
	if b.opt.JournalLines <= 0 {
		b.note("journal.txt: --journal-lines 0")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := b.opt.Journal(ctx, b.opt.JournalLines)
	switch {
	case errors.Is(err, ErrNoJournal):
		b.note("journal.txt: this system has no journalctl")
		return
	case err != nil:
		out = fmt.Appendf(out, "\njournalctl: %v\n", err)
	}
	b.add("journal.txt", out)
}

// journalctl reads the unit's last n lines from the journal.
func journalctl(ctx context.Context, n int) ([]byte, error) {
	path, err := exec.LookPath("journalctl")
	if err != nil {
		return nil, ErrNoJournal
	}
	return exec.CommandContext(ctx, path, "-u", "cmx-agent", "-n", strconv.Itoa(n), "--no-pager").CombinedOutput()
}
