package transport

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// FuzzLimitConn feeds what the network controls, the byte stream from the broker, through the
// cutting reader and paho's packet reader behind it. Nothing may panic, and no packet that comes out
// is larger than the limit allows.
func FuzzLimitConn(f *testing.F) {
	var seed bytes.Buffer
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.Qos, pub.MessageID, pub.TopicName, pub.Payload = 1, 3, "kp1/a/cmx/t/json", bytes.Repeat([]byte("y"), 3000)
	pub.Write(&seed)
	f.Add(seed.Bytes())
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f, 0, 1, 'a'})
	f.Add([]byte{0x32, 0x05, 0xff, 0xff})
	f.Add([]byte{0xd0, 0x00, 0x30, 0x03, 0x00, 0x01, 'a'})
	const limit = 1024
	f.Fuzz(func(t *testing.T, stream []byte) {
		client, server := net.Pipe()
		go func() { server.Write(stream); server.Close() }()
		lc := newLimitConn(client, limit, bytes.Repeat([]byte{9}, 16))
		defer client.Close()
		for range 64 {
			p, err := packets.ReadPacket(lc)
			if err != nil {
				if err == io.EOF || err == io.ErrUnexpectedEOF {
					return
				}
				return // a malformed stream ends the connection; that is all it may do
			}
			if pp, ok := p.(*packets.PublishPacket); ok && len(pp.Payload) > limit+16+8+headLen {
				t.Fatalf("a PUBLISH of %d payload bytes came through a limit of %d", len(pp.Payload), limit)
			}
		}
	})
}
