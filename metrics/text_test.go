package metrics

import "testing"

func TestWriter_OutputParsesWithHostileLabelValues(t *testing.T) {
	odd := "a \"quoted\" id\\with a backslash\nand a newline"
	fams, _ := parse(t, func(w *Writer) error {
		w.Family("x_info", "Help with a backslash \\ and\na newline.", "gauge")
		w.Sample("x_info", 1, Label{"id", odd})
		w.Family("x_seconds", "A histogram.", "histogram")
		w.Histogram("x_seconds", []float64{0.5, 1}, []uint64{1, 2}, 1.25, 3)
		return nil
	})
	if got := fams["x_info"].GetMetric()[0].GetLabel()[0].GetValue(); got != odd {
		t.Errorf("label value %q, want %q", got, odd)
	}
	h := fams["x_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 3 || h.GetSampleSum() != 1.25 || len(h.GetBucket()) < 2 || h.GetBucket()[1].GetCumulativeCount() != 2 {
		t.Errorf("histogram = %v", h)
	}
}
