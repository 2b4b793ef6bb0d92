package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// clientOptions builds paho's options from [broker]. Reconnecting is the session's job, so paho's own
// retry is off; acknowledgements are sent by the agent once a message is stored.
func (a *Agent) clientOptions() (*mqtt.ClientOptions, error) {
	b := a.cfg.Broker
	o := mqtt.NewClientOptions()
	for _, s := range b.Servers {
		o.AddBroker(s)
	}
	o.SetClientID(b.ClientID)
	o.SetCleanSession(b.CleanSession)
	o.SetKeepAlive(b.Keepalive.Duration)
	o.SetPingTimeout(10 * time.Second)
	o.SetConnectTimeout(10 * time.Second)
	o.SetWriteTimeout(10 * time.Second)
	o.SetOrderMatters(false)
	o.SetAutoReconnect(false)
	o.SetConnectRetry(false)
	o.SetAutoAckDisabled(true)
	o.SetResumeSubs(false)
	if b.Username != "" || b.PasswordFile != "" {
		user, file := b.Username, b.PasswordFile
		o.SetCredentialsProvider(func() (string, string) {
			if file == "" {
				return user, ""
			}
			// Read on every connect so a rotated password is picked up without a restart.
			raw, err := os.ReadFile(file)
			if err != nil {
				a.log.Error("cannot read password_file", "path", file, "err", err)
				return user, ""
			}
			return user, strings.TrimRight(string(raw), "\r\n")
		})
	}
	if b.CAFile != "" || b.CertFile != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if b.CAFile != "" {
			pem, err := os.ReadFile(b.CAFile)
			if err != nil {
				return nil, fmt.Errorf("ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", b.CAFile)
			}
			tc.RootCAs = pool
		}
		if b.CertFile != "" {
			cert, key := b.CertFile, b.KeyFile
			// Loaded at each handshake so a rotated certificate is used on the next reconnect.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				c, err := tls.LoadX509KeyPair(cert, key)
				if err != nil {
					return nil, fmt.Errorf("client certificate: %w", err)
				}
				return &c, nil
			}
		}
		o.SetTLSConfig(tc)
	} else {
		o.SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	return o, nil
}
