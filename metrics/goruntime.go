package metrics

import (
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"time"
)

// Go runtime/metrics names read for the go_* families.
const (
	rtGoroutines  = "/sched/goroutines:goroutines"
	rtThreads     = "/sched/threads/total:threads"
	rtGOMAXPROCS  = "/sched/gomaxprocs:threads"
	rtHeapObjects = "/memory/classes/heap/objects:bytes"
	rtHeapUnused  = "/memory/classes/heap/unused:bytes"
	rtTotal       = "/memory/classes/total:bytes"
	rtAllocBytes  = "/gc/heap/allocs:bytes"
	rtAllocs      = "/gc/heap/allocs:objects"
	rtTinyAllocs  = "/gc/heap/tiny/allocs:objects"
	rtFrees       = "/gc/heap/frees:objects"
	rtGoal        = "/gc/heap/goal:bytes"
)

// Go writes the go_* families the Prometheus client libraries export, with their names and
// meanings: goroutines, threads, go_info, the main go_memstats_* figures and
// go_gc_duration_seconds. They come from runtime/metrics and debug.ReadGCStats, neither of which
// stops the world.
func Go(w *Writer) {
	names := []string{rtGoroutines, rtThreads, rtGOMAXPROCS, rtHeapObjects, rtHeapUnused, rtTotal,
		rtAllocBytes, rtAllocs, rtTinyAllocs, rtFrees, rtGoal}
	samples := make([]rtmetrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	rtmetrics.Read(samples)
	v := make(map[string]float64, len(samples))
	for _, s := range samples {
		if s.Value.Kind() == rtmetrics.KindUint64 {
			v[s.Name] = float64(s.Value.Uint64())
		}
	}

	gauge := func(name, help string, value float64) {
		w.Family(name, help, "gauge")
		w.Sample(name, value)
	}
	counter := func(name, help string, value float64) {
		w.Family(name, help, "counter")
		w.Sample(name, value)
	}
	gauge("go_goroutines", "Number of goroutines that currently exist.", v[rtGoroutines])
	gauge("go_threads", "Number of OS threads created.", v[rtThreads])
	gauge("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting.", v[rtGOMAXPROCS])
	w.Family("go_info", "Information about the Go environment.", "gauge")
	w.Sample("go_info", 1, Label{"version", runtime.Version()})
	gauge("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", v[rtHeapObjects])
	counter("go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", v[rtAllocBytes])
	counter("go_memstats_mallocs_total", "Total number of heap objects allocated.", v[rtAllocs]+v[rtTinyAllocs])
	counter("go_memstats_frees_total", "Total number of heap objects freed.", v[rtFrees]+v[rtTinyAllocs])
	gauge("go_memstats_heap_inuse_bytes", "Number of heap bytes in spans in use.", v[rtHeapObjects]+v[rtHeapUnused])
	gauge("go_memstats_sys_bytes", "Number of bytes obtained from the system.", v[rtTotal])
	gauge("go_memstats_next_gc_bytes", "Number of heap bytes when the next garbage collection will take place.", v[rtGoal])

	// The quantiles the Prometheus client libraries use: minimum, quartiles, maximum.
	gcQuantiles := []float64{0, 0.25, 0.5, 0.75, 1}
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, len(gcQuantiles))}
	debug.ReadGCStats(&gc)
	last := 0.0
	if !gc.LastGC.IsZero() {
		last = float64(gc.LastGC.UnixNano()) / 1e9
	}
	gauge("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of the last garbage collection.", last)
	pauses := make([]float64, len(gc.PauseQuantiles))
	for i, d := range gc.PauseQuantiles {
		pauses[i] = d.Seconds()
	}
	w.Family("go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", "summary")
	w.Summary("go_gc_duration_seconds", gcQuantiles, pauses, gc.PauseTotal.Seconds(), uint64(gc.NumGC))
}
