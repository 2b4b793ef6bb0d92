package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/cmx-agent/cmx-agent/config"
)

// clientOptions builds paho's options from [broker]. It runs before every connection attempt, so the
// password file, the CA file and the client certificate are read from disk each time: a rotated
// certificate or password is used on the next reconnect without a restart. Reconnecting is the
// session's job, so paho's own retry is off; acknowledgements are sent by the agent once a message is
// stored.
func (s *Session) clientOptions(clean bool) (*mqtt.ClientOptions, error) {
	b := s.cfg
	o := mqtt.NewClientOptions()
	for _, s := range b.Servers {
		o.AddBroker(s)
	}
	o.SetClientID(s.clientID)
	o.SetCleanSession(b.CleanSession || clean)
	o.SetKeepAlive(b.Keepalive.Duration)
	o.SetPingTimeout(10 * time.Second)
	o.SetConnectTimeout(10 * time.Second)
	o.SetWriteTimeout(10 * time.Second)
	// Explicit MQTT 3.1.1: otherwise paho retries every refused CONNECT with MQTT 3.1, which doubles
	// the attempts a broker sees and hides the first refusal's reason.
	o.SetProtocolVersion(4)
	// Ordered, so that a burst is committed in the order the server sent it (newest wins); the
	// handler only queues (see inbox), which keeps paho's router from blocking.
	o.SetOrderMatters(true)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetAutoAckDisabled(true)
	o.SetResumeSubs(false)
	if b.Username != "" || b.PasswordFile != "" {
		o.SetUsername(b.Username)
		if b.PasswordFile != "" {
			pw, err := readSecret(b.PasswordFile, "password_file")
			if err != nil {
				return nil, &setupError{cause: CauseAuth, err: err}
			}
			o.SetPassword(strings.TrimRight(string(pw), "\r\n"))
		}
	}
	tc, err := tlsConfig(b.CAFile, b.CertFile, b.KeyFile)
	if err != nil {
		return nil, &setupError{cause: CauseTLS, err: err}
	}
	// paho applies it to tls://, ssl://, mqtts:// and wss:// only; tcp:// and ws:// stay plain.
	o.SetTLSConfig(tc)
	o.SetCustomOpenConnectionFn(openConnection)
	return o, nil
}

// tlsConfig is TLS 1.2 or later, the server's certificate checked against caFile (the system roots
// when empty) and against the host name of the server URL, which crypto/tls takes from the address
// paho dials.
func tlsConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", caFile)
		}
		tc.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		if _, err := readSecret(keyFile, "key_file"); err != nil {
			return nil, err
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file %s / key_file %s: %w", certFile, keyFile, err)
		}
		// Its validity dates are not checked here: a gateway's clock may be wrong after boot (no
		// RTC), and the broker, which decides, has the better clock.
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// readSecret reads a file holding a secret. A file any user of the gateway can read is refused, as
// ssh refuses such a private key: whoever can read it can act as this gateway towards the broker.
// Group read is allowed, so a packaging group may give the agent access.
func readSecret(path, key string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	if fi.Mode().Perm()&0o004 != 0 {
		return nil, &SecretModeError{Key: key, Path: path, Mode: fi.Mode().Perm()}
	}
	// Bounded: a password or key is small, and a wrong path (a log file, a device) must not fill
	// memory.
	data, err := io.ReadAll(io.LimitReader(f, maxSecret+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, path, err)
	}
	if len(data) > maxSecret {
		return nil, fmt.Errorf("%s %s: larger than %d bytes, not a password or key file", key, path, maxSecret)
	}
	return data, nil
}

const maxSecret = 64 << 10

// SecretModeError is a password or key file that every user can read.
type SecretModeError struct {
	Key  string // the configuration key naming the file
	Path string
	Mode fs.FileMode
}

func (e *SecretModeError) Error() string {
	return fmt.Sprintf("%s %s is readable by every user (mode %04o); refusing to use it: chmod o-rwx %s", e.Key, e.Path, e.Mode, e.Path)
}

// vagueCause reports whether err is a connection cut without a reason: a reset or an EOF. With TLS
// 1.3 a broker that refuses the client certificate sends its alert after the client's handshake has
// finished, so the same refusal shows up either as that alert or, when the CONNECT write loses the
// race, as a reset.
func vagueCause(err error) bool {
	var cut *HandshakeCutError
	if strings.Contains(err.Error(), "remote error: tls:") || errors.As(err, &cut) {
		return false
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// connectCause says in plain words why a connection attempt failed, for an operator reading one log
// line: which certificate check failed, or that the broker refused the credentials.
func connectCause(err error) string {
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		recordHdr  tls.RecordHeaderError
		secretMode *SecretModeError
		cut        *HandshakeCutError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &secretMode):
		return secretMode.Error()
	case errors.As(err, &unknownCA):
		return "server certificate not trusted: it is not signed by a CA in ca_file (or the system roots when ca_file is empty)"
	case errors.As(err, &hostname):
		return "server certificate does not match the server name: " + hostname.Error()
	case errors.As(err, &invalid):
		return "server certificate rejected: " + invalid.Error()
	case errors.As(err, &cut):
		return "the broker closed the connection during the TLS handshake: it may not speak TLS " +
			"(a plain MQTT port in a tls:// URL?), or it accepts no more connections"
	case errors.As(err, &recordHdr):
		return "the server did not answer with TLS (a plain MQTT port in a tls:// URL?)"
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return "not authorised: the broker refused the username or password (check username and password_file)"
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return "the broker rejected the client id"
	case strings.Contains(msg, "protocol version not supported"):
		return "no common TLS version: the agent needs TLS 1.2 or later"
	case strings.Contains(msg, "remote error: tls:"):
		alert := msg[strings.Index(msg, "remote error: tls:")+len("remote error: "):]
		alert, _, _ = strings.Cut(alert, "\n")
		return "the broker refused the TLS handshake (" + strings.TrimSpace(alert) +
			"): check cert_file and key_file against the CA the broker trusts"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused: no broker listening"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "no answer from the broker in time (" + msg + ")"
	}
	return msg
}

// Causes of failed connection attempts, as the metric cmx_agent_connect_failures_total labels them.
const (
	CauseRefused = "refused" // nothing listens at the address
	CauseTimeout = "timeout" // no answer in time: connect, TLS handshake or CONNACK
	CauseTLS     = "tls"     // the TLS handshake failed, or ca_file, cert_file or key_file cannot be used
	CauseAuth    = "auth"    // the broker refused the credentials or client id, or password_file cannot be used
	CauseDNS     = "dns"     // the broker's host name does not resolve
	CauseOther   = "other"   // anything else: a reset without a reason, the broker unavailable, ...
)

// FailureCauses are the causes of failed connection attempts, in the order metrics show them.
func FailureCauses() []string {
	return []string{CauseRefused, CauseTimeout, CauseTLS, CauseAuth, CauseDNS, CauseOther}
}

// failureCause sorts a failed connection attempt into one of FailureCauses, so a fleet's
// dashboards can tell a broker that is down from credentials or certificates gone wrong.
func failureCause(err error) string {
	var (
		setup   *setupError
		dns     *net.DNSError
		netErr  net.Error
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		invalid x509.CertificateInvalidError
		header  tls.RecordHeaderError
		alert   tls.AlertError
		cut     *HandshakeCutError
	)
	switch {
	case errors.As(err, &setup):
		return setup.cause
	case errors.As(err, &dns):
		return CauseDNS
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &invalid), errors.As(err, &header),
		errors.As(err, &alert), errors.As(err, &cut), strings.Contains(err.Error(), "remote error: tls:"),
		strings.Contains(err.Error(), "protocol version not supported"):
		return CauseTLS
	case errors.Is(err, packets.ErrorRefusedNotAuthorised), errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword),
		errors.Is(err, packets.ErrorRefusedIDRejected):
		return CauseAuth
	case errors.Is(err, syscall.ECONNREFUSED):
		return CauseRefused
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return CauseTimeout
	}
	return CauseOther
}

// setupError is a connection attempt that failed before it reached the network: a file the
// connection needs cannot be used. Its text is the wrapped error's.
type setupError struct {
	cause string // one of FailureCauses
	err   error
}

func (e *setupError) Error() string { return e.err.Error() }
func (e *setupError) Unwrap() error { return e.err }

// redactServers hides any password written into a server URL, for logs.
func redactServers(servers []string) []string {
	out := make([]string, len(servers))
	for i, s := range servers {
		if u, err := url.Parse(s); err == nil {
			out[i] = u.Redacted()
		} else {
			out[i] = "(unparsable URL)"
		}
	}
	return out
}

// ProbeOptions are paho's options for a one-off clean-session connection with cfg's TLS settings
// and credentials, read and checked as the session reads them: for `cmx-agent check --online`.
// clientID must differ from the running agent's, or the broker would disconnect the agent.
func ProbeOptions(cfg config.Broker, clientID string) (*mqtt.ClientOptions, error) {
	return (&Session{cfg: cfg, clientID: clientID}).clientOptions(true)
}

// ConnectCause says in plain words why a connection attempt failed, as the agent logs it.
func ConnectCause(err error) string { return connectCause(err) }
