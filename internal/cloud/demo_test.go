package cloud

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// An agent that stops on its own while the walk-through waits for its first confirmation ends the
// demo with the reason, and the demo's clean-up, which waits for the agent, returns.
func TestDemo_AnAgentThatStopsEarlyEndsTheDemoWithoutAHang(t *testing.T) {
	d := &demo{confs: make(chan Confirmation)}
	closed := make(chan struct{})
	stop := d.runAgent(func() error { return errors.New("state folder locked") }, func() { close(closed) })
	ended := make(chan error, 1)
	go func() {
		_, err := d.waitConfirmation(context.Background())
		stop()
		ended <- err
	}()
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "agent stopped: state folder locked") {
			t.Errorf("walk-through ended with %v, want the agent's reason", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the demo's clean-up still waits for an agent that has stopped")
	}
	select {
	case <-closed:
	default:
		t.Error("the agent was not closed")
	}
}
