// Package bbolt32 checks, on every target the packages ship (scripts/arm-tests runs it on armv7),
// that bbolt as the agent opens it holds a database of the size a gateway can reach: many endpoints
// with 1 MiB configurations. On 32-bit ARM bbolt's whole file is one mmap in a 4 GiB (or, with a
// 3G/1G kernel, 3 GiB) address space, capped at 2 GiB by bbolt itself (MaxMapSize 0x7FFFFFFF).
//
// Only bbolt is used, with a key layout like the one the agent's store had (state_dir/agent.db,
// endpoints/<ep>/{state,body,next}, one commit per step; store/store.go now keeps a flat "hot"
// bucket, which holds the same bytes): what it checks is the file size and the mmap, not the keys. CMX_BBOLT32_ENDPOINTS=N sizes the test up to find the limit.
package bbolt32

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
)

const mib = 1 << 20

// open opens the database as the agent does (store/recover.go: only Timeout is set, so
// InitialMmapSize is 0 and the mmap grows with the file: 32 KiB doubling to 1 GiB, then 1 GiB steps).
func open(t *testing.T, path string) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return db
}

// body is the 1 MiB configuration of endpoint i, version v: distinct per endpoint and version.
func body(i, v int) []byte {
	seed := sha256.Sum256([]byte(fmt.Sprintf("ep-%d-v%d", i, v)))
	return bytes.Repeat(seed[:], mib/len(seed))
}

func put(db *bolt.DB, ep string, kv ...[]byte) error {
	return db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists([]byte("endpoints"))
		if err != nil {
			return err
		}
		b, err := root.CreateBucketIfNotExists([]byte(ep))
		if err != nil {
			return err
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if err := b.Put(kv[i], kv[i+1]); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestManyEndpointsWith1MiBConfigurations writes what N endpoints with 1 MiB configurations leave in
// the store: per endpoint an applied body, then a waiting offer of the same size, then a second
// applied version (bbolt copies on write, so the file holds more than the live data), one commit
// per step as the agent commits. Then it reopens the file (one mmap of all of it) and reads every
// body back.
func TestManyEndpointsWith1MiBConfigurations(t *testing.T) {
	// 32-bit: 128 MiB live, 145 MiB of file, past several mmap remaps; 6 s under qemu. 64-bit
	// targets have no map limit worth the time (20 s with -race): a few endpoints check the test.
	n := 64
	if unsafe.Sizeof(uintptr(0)) == 8 {
		n = 8
	}
	if s := os.Getenv("CMX_BBOLT32_ENDPOINTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			t.Fatalf("CMX_BBOLT32_ENDPOINTS: %v", err)
		}
	}
	path := filepath.Join(t.TempDir(), "agent.db")
	db := open(t, path)
	defer func() { db.Close() }()
	start := time.Now()
	for i := range n {
		ep := fmt.Sprintf("ep-%04d", i)
		state := []byte(`{"applied_id":"1","applied_hash":"x"}`)
		if err := put(db, ep, []byte("state"), state, []byte("body"), body(i, 1)); err != nil {
			t.Fatalf("endpoint %d of %d, first body: %v", i, n, err)
		}
		if err := put(db, ep, []byte("next"), body(i, 2)); err != nil {
			t.Fatalf("endpoint %d of %d, waiting offer: %v", i, n, err)
		}
	}
	for i := range n {
		err := db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("endpoints")).Bucket([]byte(fmt.Sprintf("ep-%04d", i)))
			if err := b.Put([]byte("body"), body(i, 2)); err != nil {
				return err
			}
			return b.Delete([]byte("next"))
		})
		if err != nil {
			t.Fatalf("endpoint %d of %d, second body: %v", i, n, err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	db = open(t, path)
	err = db.View(func(tx *bolt.Tx) error {
		for i := range n {
			got := tx.Bucket([]byte("endpoints")).Bucket([]byte(fmt.Sprintf("ep-%04d", i))).Get([]byte("body"))
			if !bytes.Equal(got, body(i, 2)) {
				return fmt.Errorf("endpoint %d: body is not the second version (%d bytes)", i, len(got))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s/%s, %d-bit: %d endpoints x 1 MiB: file %d MiB, written and read back in %v",
		runtime.GOOS, runtime.GOARCH, 8*unsafe.Sizeof(uintptr(0)), n, fi.Size()/mib,
		time.Since(start).Round(time.Millisecond))
}
