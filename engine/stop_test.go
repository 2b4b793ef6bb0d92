package engine

import (
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
)

// cpuTime is the CPU time the test process has used so far, user and system.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// At stop an endpoint waits for its apply in progress (a large file's fsync on a slow card may take
// seconds); that wait must not spin on the ended context and burn a core of the gateway.
func TestStop_WaitingForTheApplyInProgressBurnsNoCPU(t *testing.T) {
	blocked, release, pause := holdFirst(StepSynced)
	c := startCoreWith(t, coreOptions{Pause: pause}, config.Endpoint{Token: "gw"})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c.deliver(p+"/json", 1, `{"id": 1, "entries": [1]}`)
	<-blocked // 1 is being written, and stays so while the agent stops
	c.cancel()
	const window = 500 * time.Millisecond
	before := cpuTime(t)
	time.Sleep(window) // a measurement window, not a synchronisation: nothing is waited for
	used := cpuTime(t) - before
	unblock()
	select {
	case <-c.done:
	case <-time.After(testWait):
		t.Fatal("the engine did not stop after the apply in progress")
	}
	c.e.Close()
	c.e = nil
	t.Logf("%v of CPU used in %v", used, window)
	if used > window/5 {
		t.Errorf("%v of CPU used in %v while the endpoint waited for its apply to stop, want next to none", used, window)
	}
}
