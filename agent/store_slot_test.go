package agent

import (
	"bytes"
	"encoding/json"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestSlot_LargeBodyRoundTripsAndIsStoredRaw(t *testing.T) {
	st := openTestStore(t)
	body := bytes.Repeat([]byte(`{"k":"v"},`), 100_000)
	in := &Offer{Seq: 7, ID: "42", Text: "42", Body: body, ReplyTopic: "r", ReplyQoS: 1}
	if err := st.Update(func(tx *Tx) error { return tx.SetSlot("ep", SlotNext, in) }); err != nil {
		t.Fatal(err)
	}
	var out *Offer
	var recLen int
	err := st.View(func(tx *Tx) error {
		var err error
		out, err = tx.Slot("ep", SlotNext)
		recLen = len(tx.tx.Bucket(bucketEndpoints).Bucket([]byte("ep")).Get([]byte(SlotNext)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if out == nil || !bytes.Equal(out.Body, body) || out.Seq != 7 || out.ID != "42" || out.ReplyTopic != "r" {
		t.Fatalf("slot read back as %+v", out)
	}
	if recLen > 1000 {
		t.Errorf("the offer's JSON record is %d bytes: the body should be stored apart", recLen)
	}
	if err := st.Update(func(tx *Tx) error { return tx.SetSlot("ep", SlotNext, nil) }); err != nil {
		t.Fatal(err)
	}
	err = st.View(func(tx *Tx) error {
		if v := tx.tx.Bucket(bucketEndpoints).Bucket([]byte("ep")).Get(bodyKey(SlotNext)); v != nil {
			t.Errorf("emptied slot left a body of %d bytes", len(v))
		}
		o, err := tx.Slot("ep", SlotNext)
		if o != nil {
			t.Errorf("emptied slot reads %+v", o)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSlot_ReadsOffersWrittenWithTheBodyInline(t *testing.T) {
	// Databases written before bodies were kept apart hold the body base64-encoded in the record.
	st := openTestStore(t)
	old, err := json.Marshal(Offer{Seq: 3, ID: `"a"`, Text: "a", Body: []byte(`[1,2]`), ReplyTopic: "r", ReplyQoS: 1})
	if err != nil {
		t.Fatal(err)
	}
	err = st.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketEndpoints).CreateBucketIfNotExists([]byte("ep"))
		if err != nil {
			return err
		}
		return b.Put([]byte(SlotCurrent), old)
	})
	if err != nil {
		t.Fatal(err)
	}
	var o *Offer
	if err := st.View(func(tx *Tx) (err error) { o, err = tx.Slot("ep", SlotCurrent); return err }); err != nil {
		t.Fatal(err)
	}
	if o == nil || string(o.Body) != `[1,2]` || o.Seq != 3 {
		t.Fatalf("old record read as %+v", o)
	}
}

func TestSlotSeq_ReadsTheSequenceOfAFilledSlotOnly(t *testing.T) {
	st := openTestStore(t)
	if err := st.Update(func(tx *Tx) error {
		return tx.SetSlot("ep", SlotCurrent, &Offer{Seq: 9, Body: []byte("[1]")})
	}); err != nil {
		t.Fatal(err)
	}
	err := st.View(func(tx *Tx) error {
		if seq, ok, err := tx.SlotSeq("ep", SlotCurrent); err != nil || !ok || seq != 9 {
			t.Errorf("SlotSeq(current) = %d, %v, %v; want 9, true, nil", seq, ok, err)
		}
		if seq, ok, err := tx.SlotSeq("ep", SlotNext); err != nil || ok {
			t.Errorf("SlotSeq(next) of an empty slot = %d, %v, %v; want false", seq, ok, err)
		}
		if _, ok, err := tx.SlotSeq("other", SlotNext); err != nil || ok {
			t.Errorf("SlotSeq of an unknown endpoint = %v, %v; want false, nil", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
