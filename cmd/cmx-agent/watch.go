package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/watch"
)

// cmdWatch is `cmx-agent watch [--debounce D] PATH [-- CMD ARGS...]`: one line per version of PATH on
// stdout (time, size, sha256), starting with the current one, and CMD run after each new version,
// directly, never through a shell. CMD's output goes to stderr, so stdout stays one line per version.
func cmdWatch(args []string, stdout, stderr io.Writer) int {
	c := newCommand("watch", "[--debounce D] PATH [-- CMD ARGS...]",
		"Prints time, size and sha256 of the current and each new version of PATH, and runs CMD (no shell) after each new one.", stderr)
	debounce := c.Duration("debounce", 200*time.Millisecond, "the quiet time `D` that ends a burst of changes")
	if code, ok := c.parse(args, stdout); !ok {
		return code
	}
	rest := c.Args()
	if len(rest) == 0 {
		fmt.Fprintln(stderr, "cmx-agent watch: PATH is missing")
		return c.usageError()
	}
	path, cmd := rest[0], rest[1:]
	if len(cmd) > 0 {
		if cmd[0] != "--" || len(cmd) == 1 {
			fmt.Fprintln(stderr, "cmx-agent watch: the command follows --: cmx-agent watch PATH -- CMD ARGS...")
			return 2
		}
		cmd = cmd[1:]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := watch.Watch(ctx, path, watch.Options{
		Debounce: *debounce,
		Warn:     func(msg string) { fmt.Fprintln(stderr, "cmx-agent watch:", msg) },
	}, func(v watch.Version) {
		fmt.Fprintln(stdout, v.String())
		if len(cmd) == 0 || v.Initial {
			return
		}
		c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
		c.Stdout, c.Stderr = stderr, stderr
		c.Env = append(os.Environ(), "CMX_WATCH_PATH="+path, "CMX_WATCH_SIZE="+strconv.FormatInt(v.Size, 10), "CMX_WATCH_SHA256="+v.SHA256)
		if err := c.Run(); err != nil {
			fmt.Fprintf(stderr, "cmx-agent watch: %s: %v\n", cmd[0], err)
		}
	})
	if err != nil {
		fmt.Fprintln(stderr, "cmx-agent watch:", err)
		return 1
	}
	return 0
}
