package store

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestBatch_ConcurrentCallersAreAllCommittedInFewerTransactions(t *testing.T) {
	st := mustOpen(t, 0)
	const n = 200
	var (
		mu  sync.Mutex
		txs = map[*bolt.Tx]bool{} // the transactions the functions ran in
		wg  sync.WaitGroup
	)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- st.Batch(func(tx *Tx) error {
				mu.Lock()
				txs[tx.tx] = true
				mu.Unlock()
				return tx.SetState(fmt.Sprintf("ep-%03d", i), EndpointState{AppliedID: fmt.Sprint(i)})
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Batch: %v", err)
		}
	}
	err := st.View(func(tx *Tx) error {
		for i := range n {
			s, err := tx.State(fmt.Sprintf("ep-%03d", i))
			if err != nil {
				return err
			}
			if s.AppliedID != fmt.Sprint(i) {
				return fmt.Errorf("ep-%03d: applied id %q, want %d", i, s.AppliedID, i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Grouping depends on timing; a group of one per caller would mean it never happens.
	if len(txs) >= n {
		t.Errorf("%d concurrent Batch calls took %d transactions, want fewer", n, len(txs))
	}
}

func TestBatch_FailingFunctionDoesNotFailOthers(t *testing.T) {
	st := mustOpen(t, 0)
	boom := errors.New("boom")
	const n = 50
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = st.Batch(func(tx *Tx) error {
				if err := tx.SetState(fmt.Sprintf("ep-%02d", i), EndpointState{AppliedID: "x"}); err != nil {
					return err
				}
				if i%7 == 3 {
					return boom
				}
				return nil
			})
		}()
	}
	wg.Wait()
	err := st.View(func(tx *Tx) error {
		for i := range n {
			s, err := tx.State(fmt.Sprintf("ep-%02d", i))
			if err != nil {
				return err
			}
			failing := i%7 == 3
			if failing && !errors.Is(results[i], boom) {
				t.Errorf("caller %d: err %v, want boom", i, results[i])
			}
			if !failing && results[i] != nil {
				t.Errorf("caller %d: err %v, want nil", i, results[i])
			}
			if got := s.AppliedID == "x"; got == failing {
				t.Errorf("caller %d (failing %v): state written = %v", i, failing, got)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// What Batch wrote is in the file when the store is opened again, as after a restart (that it is on
// the disk, not only in the page cache, is TestCommit_IsSyncedToDiskBeforeItReturns's).
func TestBatch_WriteIsReadBackAfterAReopen(t *testing.T) {
	st := mustOpen(t, 0)
	if err := st.Batch(func(tx *Tx) error { return tx.SetState("ep", EndpointState{AppliedID: "42"}) }); err != nil {
		t.Fatal(err)
	}
	st.mustClose()
	st.mustReopen()
	var s EndpointState
	if err := st.View(func(tx *Tx) (err error) { s, err = tx.State("ep"); return err }); err != nil || s.AppliedID != "42" {
		t.Errorf("state after a reopen = %+v, %v; want applied id 42", s, err)
	}
}

func TestBatch_LoneCallerCommitsWithoutWaitingForCompany(t *testing.T) {
	st := mustOpen(t, 0)
	// bbolt's own db.Batch waits up to MaxBatchDelay (10 ms) for more callers; a lone push must not.
	// Medians, compared with Update on the same database, so that a slow or busy disk does not fail
	// the test.
	const n = 21
	var upd, bat []time.Duration
	for i := range n {
		t0 := time.Now()
		if err := st.Update(func(tx *Tx) error { return tx.SetState("u", EndpointState{AppliedID: fmt.Sprint(i)}) }); err != nil {
			t.Fatal(err)
		}
		upd = append(upd, time.Since(t0))
		t0 = time.Now()
		if err := st.Batch(func(tx *Tx) error { return tx.SetState("b", EndpointState{AppliedID: fmt.Sprint(i)}) }); err != nil {
			t.Fatal(err)
		}
		bat = append(bat, time.Since(t0))
	}
	slices.Sort(upd)
	slices.Sort(bat)
	if mu, mb := upd[n/2], bat[n/2]; mb > mu+5*time.Millisecond {
		t.Errorf("a lone Batch call takes %v (median), an Update %v: Batch waits for company", mb, mu)
	}
}
