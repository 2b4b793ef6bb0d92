package transport

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/net/proxy"
)

// openConnection dials a broker as paho does (same schemes, same proxy variables), with one
// difference: a TLS connection reports the broker's TLS alert instead of a bare reset. With TLS 1.3
// the broker checks the client certificate after the client's handshake has returned; when it
// refuses, the CONNECT write usually fails with "connection reset by peer" although the reason (e.g.
// "unknown certificate authority") is already waiting in the receive buffer.
func openConnection(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
	dialer := o.Dialer
	if dialer == nil {
		dialer = &net.Dialer{Timeout: o.ConnectTimeout}
	}
	switch u.Scheme {
	case "ws", "wss":
		d := *u
		d.User = nil // gorilla/websocket refuses URLs with user info
		var tc *tls.Config
		if u.Scheme == "wss" {
			tc = o.TLSConfig
		}
		return mqtt.NewWebsocket(d.String(), tc, o.ConnectTimeout, o.HTTPHeaders, o.WebsocketOptions)
	case "mqtt", "tcp":
		return proxy.FromEnvironmentUsing(dialer).Dial("tcp", u.Host)
	case "ssl", "tls", "mqtts":
		var (
			conn *tls.Conn
			err  error
		)
		if os.Getenv("all_proxy") == "" {
			conn, err = tls.DialWithDialer(dialer, "tcp", u.Host, o.TLSConfig)
		} else {
			var raw net.Conn
			if raw, err = proxy.FromEnvironment().Dial("tcp", u.Host); err == nil {
				conn = tls.Client(raw, o.TLSConfig)
				if err = conn.Handshake(); err != nil {
					raw.Close()
				}
			}
		}
		if err != nil {
			if vagueCause(err) {
				// The TCP connection was made (a refused one is not vague): the handshake was cut.
				err = &HandshakeCutError{Err: err}
			}
			return nil, err
		}
		return &alertConn{Conn: conn}, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// HandshakeCutError is a TLS handshake the server ended with a reset or an EOF, without an alert.
// A plain MQTT listener does that: it reads the ClientHello as a malformed packet and hangs up.
type HandshakeCutError struct{ Err error }

func (e *HandshakeCutError) Error() string {
	return "the broker closed the connection during the TLS handshake: " + e.Err.Error()
}

func (e *HandshakeCutError) Unwrap() error { return e.Err }

// alertConn turns a failed write into the TLS alert the peer sent before it closed, when there is
// one.
type alertConn struct {
	*tls.Conn
}

func (c *alertConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && vagueCause(err) {
		_ = c.Conn.SetReadDeadline(time.Now().Add(time.Second))
		var b [1]byte
		if _, rerr := c.Conn.Read(b[:]); rerr != nil && strings.Contains(rerr.Error(), "remote error: tls:") {
			return n, errors.Join(rerr, err)
		}
	}
	return n, err
}
