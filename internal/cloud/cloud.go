// Package cloud is the server side of the Configuration Management Extension, as cmxctl runs it:
// answering the agents' requests with configurations from a folder, pushing on change, pushing one
// file and waiting for its confirmation, an embedded MQTT broker, and the one-command demo.
//
// It is a companion for operators, tests and demos, not a Kaa server: it keeps no state beyond the
// folder of configurations.
package cloud

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/cmx-agent/cmx-agent/config"
)

// Options say which broker to use and which application and extension to speak for.
type Options struct {
	Broker     string // MQTT URL, tcp://host:port
	Username   string
	Password   string
	AppVersion string // <appversion_name>
	Extension  string // <extension_instance_name>
	Dialect    string // config.DialectCMX3 or config.DialectCMP7
	// TLS, when set, is used for tls://, ssl://, mqtts:// and wss:// brokers (a private CA, a
	// client certificate); nil uses the system's roots. tcp:// and ws:// stay plain.
	TLS    *tls.Config
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Broker == "" {
		o.Broker = config.DefaultServer
	}
	if o.Extension == "" {
		o.Extension = config.DefaultExtension
	}
	if o.Dialect == "" {
		o.Dialect = config.DefaultDialect
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// InputError is input that cannot be used: a body that is not JSON, a token that cannot be a topic
// level, a configurations folder that is not one. Nothing was sent, and trying again will not
// help (cmxctl exits 2).
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func inputError(format string, a ...any) error {
	return &InputError{Err: fmt.Errorf(format, a...)}
}

// BodyError is a configuration body that cannot be pushed. Problem reads after the body's name
// ("is not JSON: line 3, column 9: ..."), so a caller that knows the file can name it.
type BodyError struct{ Problem string }

func (e *BodyError) Error() string { return "the configuration " + e.Problem }

// notJSON says where body stops being JSON, as a BodyError; nil when it is JSON.
func notJSON(body []byte) error {
	var raw json.RawMessage
	err := json.Unmarshal(body, &raw)
	var syn *json.SyntaxError
	if err == nil || !errors.As(err, &syn) {
		return err
	}
	read := body[:min(max(syn.Offset, 0), int64(len(body)))]
	line := 1 + bytes.Count(read, []byte("\n"))
	col := len(read) - bytes.LastIndexByte(read, '\n') - 1 // the last byte read, where it failed
	if syn.Offset >= int64(len(body)) && strings.HasPrefix(syn.Error(), "unexpected end") {
		col++ // just after the end
	}
	return &InputError{Err: &BodyError{Problem: fmt.Sprintf("is not JSON: line %d, column %d: %v", line, col, syn)}}
}

// randomID is a short random hex string for client ids.
func randomID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// connect opens a clean MQTT session. onConnect runs after every (re)connect, so subscriptions are
// restored; paho does not restore them itself.
func connect(ctx context.Context, o Options, clientID string, onConnect func(mqtt.Client)) (mqtt.Client, error) {
	opts := mqtt.NewClientOptions().
		AddBroker(o.Broker).
		SetClientID(clientID).
		SetCleanSession(true).
		SetUsername(o.Username).
		SetPassword(o.Password).
		SetOrderMatters(false).
		SetAutoReconnect(true).
		SetConnectTimeout(10 * time.Second).
		SetMaxReconnectInterval(10 * time.Second).
		SetKeepAlive(30 * time.Second)
	if o.TLS != nil {
		opts.SetTLSConfig(o.TLS)
	}
	if onConnect != nil {
		opts.SetOnConnectHandler(onConnect)
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o.Broker, err)
	}
	return c, nil
}

// wait waits for a paho token within ctx.
func wait(ctx context.Context, tok mqtt.Token, what string) error {
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("%s: subscription %s refused by the broker", what, f)
			}
		}
	}
	return nil
}
