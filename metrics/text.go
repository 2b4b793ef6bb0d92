// Package metrics writes the Prometheus text exposition format (version 0.0.4): metric families
// with their HELP and TYPE lines, labels escaped as the format requires. It is a few lines of
// formatting, which is all an agent that serves a handful of families needs; the Prometheus client
// library would add megabytes to a binary that gateways keep on small flash.
package metrics

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
)

// ContentType is the media type of the format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Label is one name="value" pair.
type Label struct{ Name, Value string }

// Writer writes families and their samples; the first write error is kept and returned by Flush.
type Writer struct {
	w *bufio.Writer
}

// NewWriter writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriter(w)} }

// Family starts a metric family: typ is counter, gauge, histogram, summary or untyped.
func (w *Writer) Family(name, help, typ string) {
	w.w.WriteString("# HELP " + name + " " + escapeHelp(help) + "\n")
	w.w.WriteString("# TYPE " + name + " " + typ + "\n")
}

// Sample writes one sample of the family last started (for a histogram: name_bucket, name_sum or
// name_count).
func (w *Writer) Sample(name string, value float64, labels ...Label) {
	w.w.WriteString(name)
	if len(labels) > 0 {
		w.w.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				w.w.WriteByte(',')
			}
			w.w.WriteString(l.Name + `="` + escapeValue(l.Value) + `"`)
		}
		w.w.WriteByte('}')
	}
	w.w.WriteByte(' ')
	w.w.WriteString(formatFloat(value))
	w.w.WriteByte('\n')
}

// Histogram writes a histogram's samples: cumulative counts per upper bound, then +Inf, sum and
// count.
func (w *Writer) Histogram(name string, bounds []float64, cumulative []uint64, sum float64, count uint64, labels ...Label) {
	for i, b := range bounds {
		w.Sample(name+"_bucket", float64(cumulative[i]), append(labels[:len(labels):len(labels)], Label{"le", formatFloat(b)})...)
	}
	w.Sample(name+"_bucket", float64(count), append(labels[:len(labels):len(labels)], Label{"le", "+Inf"})...)
	w.Sample(name+"_sum", sum, labels...)
	w.Sample(name+"_count", float64(count), labels...)
}

// Summary writes a summary's samples: one per quantile (values[i] at quantiles[i]), then sum and
// count.
func (w *Writer) Summary(name string, quantiles, values []float64, sum float64, count uint64, labels ...Label) {
	for i, q := range quantiles {
		w.Sample(name, values[i], append(labels[:len(labels):len(labels)], Label{"quantile", formatFloat(q)})...)
	}
	w.Sample(name+"_sum", sum, labels...)
	w.Sample(name+"_count", float64(count), labels...)
}

// Flush writes what is buffered and returns the first error.
func (w *Writer) Flush() error { return w.w.Flush() }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

var (
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
	valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
)

func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
func escapeValue(s string) string { return valueEscaper.Replace(s) }
