package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// pahoNetwork wraps err as paho does a network error of a connection attempt.
func pahoNetwork(err error) error { return fmt.Errorf("%w : %w", packets.ErrorNetworkError, err) }

// realTimeout is the error of a read whose deadline passed.
func realTimeout(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(-time.Second))
	_, err = c.Read(make([]byte, 1))
	return err
}

// realRefused is the error of a dial to a loopback port nothing listens on.
func realRefused(t *testing.T) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := net.Dial("tcp", addr)
	if err == nil {
		c.Close()
		t.Fatal("a closed port accepted")
	}
	return err
}

func TestFailureCause_SortsEachKindOfFailedAttempt(t *testing.T) {
	_, caErr := tlsConfig("/does/not/exist/ca.pem", "", "")
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"nothing listening", pahoNetwork(realRefused(t)), CauseRefused},
		{"no CONNACK in time", pahoNetwork(realTimeout(t)), CauseTimeout},
		{"dial timed out", pahoNetwork(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}), CauseTimeout},
		{"unknown host", pahoNetwork(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "broker.invalid", IsNotFound: true}}), CauseDNS},
		{"DNS server silent", pahoNetwork(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "i/o timeout", Name: "broker", IsTimeout: true}}), CauseDNS},
		{"server certificate from another CA", pahoNetwork(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), CauseTLS},
		{"client certificate refused", pahoNetwork(errors.New("remote error: tls: unknown certificate authority")), CauseTLS},
		{"plain port in a tls:// URL", pahoNetwork(&HandshakeCutError{Err: syscall.ECONNRESET}), CauseTLS},
		{"ca_file missing", &setupError{cause: CauseTLS, err: caErr}, CauseTLS},
		{"wrong password", packets.ErrorRefusedBadUsernameOrPassword, CauseAuth},
		{"not authorised", packets.ErrorRefusedNotAuthorised, CauseAuth},
		{"client id rejected", packets.ErrorRefusedIDRejected, CauseAuth},
		{"password_file world-readable", &setupError{cause: CauseAuth, err: &SecretModeError{Key: "password_file", Path: "/p", Mode: 0o644}}, CauseAuth},
		{"broker unavailable", packets.ErrorRefusedServerUnavailable, CauseOther},
		{"reset without a reason", pahoNetwork(syscall.ECONNRESET), CauseOther},
		{"EOF", pahoNetwork(io.EOF), CauseOther},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := failureCause(c.err); got != c.want {
				t.Errorf("failureCause(%v) = %q, want %q", c.err, got, c.want)
			}
			if !slices.Contains(FailureCauses(), c.want) {
				t.Errorf("%q is not among FailureCauses() %v", c.want, FailureCauses())
			}
		})
	}
	if !errors.Is(caErr, os.ErrNotExist) {
		t.Errorf("ca_file error %v does not wrap the missing file", caErr)
	}
}

// timeoutErr is a net.Error that timed out, as a dial past its deadline returns.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }
