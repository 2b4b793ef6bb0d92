// Package cloud is the server side of the Configuration Management Extension, as cmxctl runs it:
// answering the agents' requests with configurations from a folder, pushing on change, pushing one
// file and waiting for its confirmation, an embedded MQTT broker, and the one-command demo.
//
// It is a companion for operators, tests and demos, not a Kaa server: it keeps no state beyond the
// folder of configurations.
package cloud

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
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
	Logger     *slog.Logger
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
