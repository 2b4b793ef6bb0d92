package transport

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// maxControl bounds a packet other than PUBLISH from the broker.
const maxControl = 64 << 10

// headLen is how much of an oversized payload is kept: enough for the id at its start.
const headLen = cmx.HeadLen

// openFn opens connections for c whose incoming PUBLISH packets are bounded.
func (s *Session) openFn(c *conn) mqtt.OpenConnectionFunc {
	return func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
		nc, err := openConnection(u, o)
		if err != nil {
			return nil, err
		}
		// A PUBLISH's remaining length is its payload plus at most 2+65535 bytes of topic and 2 of
		// packet id; anything longer has a payload over the limit for sure.
		return newLimitConn(nc, s.opt.MaxPayload+2+65535+2, c.nonce[:]), nil
	}
}

// limitConn reads the MQTT stream for paho and cuts every PUBLISH longer than max on the way: paho
// allocates a packet's whole remaining length (up to 256 MiB) before anyone can look at it. The cut
// packet keeps its fixed header flags, topic and packet id, so it is routed and acknowledged as
// usual (and not delivered again in a loop); its payload becomes nonce, the original payload size
// and the first headLen bytes. The nonce is random per connection, so no payload from the network
// can pass for a cut one.
type limitConn struct {
	net.Conn
	r     *bufio.Reader
	max   int
	nonce []byte
	ready []byte // bytes for paho before anything more is read
	pass  int    // bytes of the current packet's body still to pass through untouched
}

func newLimitConn(c net.Conn, max int, nonce []byte) *limitConn {
	return &limitConn{Conn: c, r: bufio.NewReaderSize(c, 4096), max: max, nonce: nonce}
}

func (c *limitConn) Read(p []byte) (int, error) {
	if len(c.ready) > 0 {
		n := copy(p, c.ready)
		c.ready = c.ready[n:]
		return n, nil
	}
	if c.pass > 0 {
		if len(p) > c.pass {
			p = p[:c.pass]
		}
		n, err := c.r.Read(p)
		c.pass -= n
		return n, err
	}
	return c.header(p)
}

// header reads the next packet's fixed header and either passes the packet on or cuts it.
func (c *limitConn) header(p []byte) (int, error) {
	first, err := c.r.ReadByte()
	if err != nil {
		return 0, err
	}
	length, lenBytes, err := readVarint(c.r)
	if err != nil {
		return 0, err
	}
	if first>>4 != 3 && length > maxControl {
		// Only a PUBLISH carries data; every other packet a broker sends is a few bytes (a SUBACK
		// one per filter). paho would allocate whatever length it is told.
		return 0, fmt.Errorf("malformed MQTT packet from the broker: type %d with %d bytes", first>>4, length)
	}
	if first>>4 != 3 || length <= c.max {
		c.ready = append(append([]byte{first}, lenBytes...), c.ready...)
		c.pass = length
		return c.Read(p)
	}
	pkt, err := c.cutPublish(first, length)
	if err != nil {
		return 0, err
	}
	c.ready = pkt
	return c.Read(p)
}

// cutPublish reads a PUBLISH body of length bytes and returns the whole packet, cut.
func (c *limitConn) cutPublish(first byte, length int) ([]byte, error) {
	var tl [2]byte
	if _, err := io.ReadFull(c.r, tl[:]); err != nil {
		return nil, err
	}
	vh := int(binary.BigEndian.Uint16(tl[:])) + 2
	if qos := (first >> 1) & 3; qos > 0 {
		vh += 2
	}
	if vh > length {
		return nil, errors.New("malformed PUBLISH: topic longer than the packet")
	}
	varHeader := make([]byte, vh)
	copy(varHeader, tl[:])
	if _, err := io.ReadFull(c.r, varHeader[2:]); err != nil {
		return nil, err
	}
	size := length - vh
	head := make([]byte, min(headLen, size))
	if _, err := io.ReadFull(c.r, head); err != nil {
		return nil, err
	}
	if _, err := io.CopyN(io.Discard, c.r, int64(size-len(head))); err != nil {
		return nil, fmt.Errorf("skip oversized payload: %w", err)
	}
	body := make([]byte, 0, vh+len(c.nonce)+8+len(head))
	body = append(body, varHeader...)
	body = append(body, c.nonce...)
	body = binary.BigEndian.AppendUint64(body, uint64(size))
	body = append(body, head...)
	pkt := append([]byte{first}, appendVarint(nil, len(body))...)
	return append(pkt, body...), nil
}

// readVarint reads an MQTT remaining length and returns it with its encoded bytes.
func readVarint(r *bufio.Reader) (int, []byte, error) {
	var (
		v   int
		raw []byte
	)
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		raw = append(raw, b)
		v |= int(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			return v, raw, nil
		}
	}
	return 0, nil, errors.New("malformed remaining length")
}

func appendVarint(b []byte, v int) []byte {
	for {
		d := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if v == 0 {
			return b
		}
	}
}

func randRead(b []byte) { _, _ = rand.Read(b) } // crypto/rand.Read never fails
