package transport

import (
	"crypto/tls"
	"strings"
	"testing"

	"github.com/cmx-agent/cmx-agent/internal/testpki"
)

func TestTLS_MinimumVersionIs12(t *testing.T) {
	tc, err := tlsConfig("", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion = %x, want TLS 1.2", tc.MinVersion)
	}
	// A server that speaks at most TLS 1.1 is refused by the handshake itself. (mosquitto on Debian 12
	// no longer offers TLS 1.1, so this server is Go's.)
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "ca")
	pair := ca.Issue(t, "server", testpki.Loopback())
	cert, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS11})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	tc, err = tlsConfig(ca.CertFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", l.Addr().String(), tc)
	if err == nil {
		conn.Close()
		t.Fatal("handshake with a TLS 1.1 server succeeded")
	}
	if cause := connectCause(err); !strings.Contains(cause, "TLS 1.2") {
		t.Errorf("cause %q (from %v) does not name the TLS version", cause, err)
	}
}

func TestRedactServers_HidesPasswordsInURLs(t *testing.T) {
	got := redactServers([]string{"tls://gw:" + "s3cret-pw" + "@broker:8883", "tcp://127.0.0.1:1883"})
	if strings.Contains(strings.Join(got, " "), "s3cret-pw") || got[1] != "tcp://127.0.0.1:1883" {
		t.Errorf("redactServers = %q", got)
	}
}
