package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// metric is one row of the table. Floor and Ratio are set when the figure has a floor; Result is
// "ok" or "MISS" against Target, "n/a" when it could not be measured, "" when it has no target.
type metric struct {
	Name   string   `json:"name"`
	Unit   string   `json:"unit"`
	Agent  float64  `json:"agent"`
	Floor  *float64 `json:"floor,omitempty"`
	Ratio  *float64 `json:"ratio,omitempty"`
	Target string   `json:"target,omitempty"`
	Result string   `json:"result,omitempty"`
	Note   string   `json:"note,omitempty"`
}

type machine struct {
	Nproc      int    `json:"nproc"`
	CPU        string `json:"cpu"`
	Kernel     string `json:"kernel"`
	Disk       string `json:"disk"`
	FsyncP50   string `json:"fsync_p50"`
	Go         string `json:"go"`
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

type report struct {
	Started  string   `json:"started"`
	Finished string   `json:"finished,omitempty"`
	Machine  machine  `json:"machine"`
	Params   params   `json:"params"`
	Metrics  []metric `json:"metrics"`
}

// ratio adds a figure with a floor; target is the largest acceptable agent/floor ratio (0 = none).
func (r *report) ratio(name, unit string, agent, floor, target float64, note string) {
	m := metric{Name: name, Unit: unit, Agent: agent, Floor: &floor, Note: note}
	if floor > 0 {
		q := agent / floor
		m.Ratio = &q
		if target > 0 {
			m.Target = fmt.Sprintf("≤ %.1f× floor", target)
			m.Result = verdict(q <= target)
		}
	}
	r.Metrics = append(r.Metrics, m)
}

// limit adds a figure with an absolute upper bound (0 = none).
func (r *report) limit(name, unit string, agent, max float64, note string) {
	m := metric{Name: name, Unit: unit, Agent: agent, Note: note}
	if max > 0 {
		m.Target = fmt.Sprintf("≤ %s %s", num(max), unit)
		m.Result = verdict(agent <= max)
	}
	r.Metrics = append(r.Metrics, m)
}

// limitFloor adds a figure with a floor whose target is an absolute upper bound (0 = none): the
// floor and the ratio are shown beside it (no ratio when the floor is 0).
func (r *report) limitFloor(name, unit string, agent, floor, max float64, note string) {
	r.limit(name, unit, agent, max, note)
	m := &r.Metrics[len(r.Metrics)-1]
	m.Floor = &floor
	if floor > 0 {
		q := agent / floor
		m.Ratio = &q
	}
}

// notJudged leaves the last figure's target in place, qualified by cond, without a result: the
// target is for another size than the one measured.
func (r *report) notJudged(cond string) {
	m := &r.Metrics[len(r.Metrics)-1]
	if m.Target != "" {
		m.Target += " " + cond
		m.Result = ""
	}
}

// missing adds a figure that could not be measured.
func (r *report) missing(name, unit, target, note string) {
	r.Metrics = append(r.Metrics, metric{Name: name, Unit: unit, Target: target, Result: "n/a", Note: note})
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISS"
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func (r *report) writeTable(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "\ncmx-bench %s: %d × %s, %s, kernel %s, %s; fsync p50 %s; load %s → %s\n",
		r.Started, m.Nproc, m.CPU, m.Disk, m.Kernel, m.Go, m.FsyncP50, m.LoadBefore, m.LoadAfter)
	fmt.Fprintf(w, "params: pushes %d, disk pushes %d, fan-out %d, idle %d s, rounds %d, large %d bytes, fleet %d%s\n\n",
		r.Params.Pushes, r.Params.Disk, r.Params.Fanout, r.Params.IdleSec, r.Params.Rounds, r.Params.BigBytes, r.Params.Fleet,
		map[bool]string{true: " (quick: short windows, noisy)"}[r.Params.Quick])
	fmt.Fprintln(w, "| figure | cmx-agent | floor | ratio | target | result | note |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---|---|")
	for _, x := range r.Metrics {
		agent, floor, ratio := "–", "–", "–"
		if x.Result != "n/a" {
			agent = num(x.Agent) + " " + x.Unit
		}
		if x.Floor != nil {
			floor = num(*x.Floor) + " " + x.Unit
		}
		if x.Ratio != nil {
			ratio = fmt.Sprintf("%.2f×", *x.Ratio)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", x.Name, agent, floor, ratio, x.Target, x.Result, x.Note)
	}
	fmt.Fprintln(w)
}

func machineInfo(dir string) machine {
	m := machine{Nproc: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadavg()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = utsString(u.Release[:])
	}
	if out, err := exec.Command("findmnt", "-no", "SOURCE,FSTYPE", "-T", dir).Output(); err == nil {
		m.Disk = strings.Join(strings.Fields(string(out)), " ")
		dev := filepath.Base(strings.Fields(m.Disk + " x")[0])
		if rot, err := os.ReadFile("/sys/block/" + dev + "/queue/rotational"); err == nil {
			m.Disk += map[bool]string{true: " (rotational)", false: " (non-rotational)"}[strings.TrimSpace(string(rot)) == "1"]
		}
	}
	m.FsyncP50 = fsyncProbe(dir)
	return m
}

func utsString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// fsyncProbe times a 4 KiB write + fdatasync in dir: the unit of cost of every durable step.
func fsyncProbe(dir string) string {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return "?"
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	var ds []time.Duration
	for i := range 50 {
		buf[0] = byte(i)
		t := time.Now()
		if _, err := f.WriteAt(buf, 0); err != nil {
			return "?"
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return "?"
		}
		ds = append(ds, time.Since(t))
	}
	slices.Sort(ds)
	return fmt.Sprintf("%.2f ms", ms(ds[len(ds)/2]))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile of sorted durations, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
