package cloud

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/fsnotify/fsnotify"

	"github.com/cmx-agent/cmx-agent/cmx"
)

// ServeOptions configure Serve.
type ServeOptions struct {
	Options
	// Configs is the folder of configurations: <token>.json holds the body for that endpoint (for
	// cmx3 the entries array, for cmp7 the config value), <token>.<name>.json a named configuration
	// (cmp7).
	Configs string
	// Share, when set, subscribes through $share/<Share>/ so that several servers on one broker
	// split the requests and confirmations between them instead of each answering every one.
	// mosquitto 2.0 and the embedded broker support it; RabbitMQ 3.10 grants such a subscription
	// and never delivers to it, so a server with Share on RabbitMQ hears nothing.
	Share string
	// Out receives one line per confirmation.
	Out io.Writer
	// OnConfirmation, when set, is called with every confirmation (the demo and tests watch them).
	OnConfirmation func(Confirmation)
	// Debounce is the quiet time after a change in Configs before the file is pushed (default
	// 300 ms): editors write a file in several steps.
	Debounce time.Duration
	// Ready, when set, is called once the server is subscribed and watching.
	Ready func()
	// SignKey, when set, signs every configuration sent (sign.go), at the version of its file's
	// modification time.
	SignKey ed25519.PrivateKey
}

type server struct {
	o      ServeOptions
	dia    dialect
	client mqtt.Client
	outMu  sync.Mutex

	// observers holds, per configuration, the topic of the latest observing request (cmp7): later
	// changes go to its response topic.
	obsMu     sync.Mutex
	observers map[Target]string
	versions  versions // of signed configurations
}

// Serve answers requests with the configurations in o.Configs, pushes a file when it changes and
// reports every confirmation, until ctx ends.
func Serve(ctx context.Context, o ServeOptions) error {
	o.defaults()
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Debounce <= 0 {
		o.Debounce = 300 * time.Millisecond
	}
	if o.AppVersion == "" {
		return inputError("the application version is required")
	}
	dia, err := newDialect(o.Dialect)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(o.Configs); err != nil {
		return inputError("configurations folder: %w", err)
	} else if !fi.IsDir() {
		return inputError("%s is not a folder", o.Configs)
	}
	s := &server{o: o, dia: dia, observers: map[Target]string{}}

	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", o.Configs, err)
	}
	defer watcher.Close()
	if err := watcher.Add(o.Configs); err != nil {
		return fmt.Errorf("watch %s: %w", o.Configs, err)
	}

	filters := map[string]byte{}
	for _, f := range dia.filters(o.AppVersion, o.Extension) {
		if o.Share != "" {
			f = "$share/" + o.Share + "/" + f
		}
		filters[f] = 1
	}
	subscribed := make(chan error, 1)
	onConnect := func(c mqtt.Client) {
		tok := c.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) { s.onMessage(ctx, m) })
		err := wait(ctx, tok, "subscribe")
		if err != nil {
			o.Logger.Error("cannot subscribe", "err", err)
		}
		select {
		case subscribed <- err:
		default:
		}
	}
	s.client, err = connect(ctx, o.Options, "cmxctl-serve-"+randomID(), onConnect)
	if err != nil {
		return err
	}
	defer s.client.Disconnect(250)
	select {
	case err := <-subscribed:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return nil
	}
	o.Logger.Info("serving configurations", "folder", o.Configs, "broker", o.Broker, "app_version", o.AppVersion, "dialect", o.Dialect)
	if o.Share != "" {
		// The broker's SUBACK cannot tell: RabbitMQ grants a $share filter and delivers nothing.
		o.Logger.Warn("subscribed through $share: RabbitMQ does not support $share (it grants the subscription and delivers nothing); on RabbitMQ run one server without --share", "group", o.Share)
	}
	if o.Ready != nil {
		o.Ready()
	}
	s.watch(ctx, watcher)
	return nil
}

// watch pushes a configuration file once it has been quiet for the debounce time.
func (s *server) watch(ctx context.Context, w *fsnotify.Watcher) {
	due := map[Target]time.Time{}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var next time.Time
		for _, t := range due {
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			// An atomic replacement shows as CREATE of the target name, an edit in place as WRITE.
			if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write) {
				if tg, ok := s.targetOf(filepath.Base(ev.Name)); ok {
					due[tg] = time.Now().Add(s.o.Debounce)
				}
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.o.Logger.Warn("watching the configurations folder", "err", err)
		case <-timer.C:
			now := time.Now()
			for tg, t := range due {
				if !t.After(now) {
					delete(due, tg)
					s.pushChange(ctx, tg)
				}
			}
		}
	}
}

// targetOf maps a file name to the configuration it holds; editors' temporary files do not count.
func (s *server) targetOf(name string) (Target, bool) {
	base, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return Target{}, false
	}
	return s.dia.target(base)
}

// VersionID names a version of a configuration file by its modification time and content, so a
// restarted server sends the same id for an unchanged file (the agent confirms it again without
// applying it twice), and a file changed back to older bytes still gets a new id.
func VersionID(body []byte, mod time.Time) cmx.ID {
	sum := sha256.Sum256(body)
	id, _ := ParseID("v" + strconv.FormatInt(mod.UnixMilli(), 10) + "-" + hex.EncodeToString(sum[:4]))
	return id
}

// readConfig reads the folder's configuration for tg and names its version; found is false when
// there is none.
func (s *server) readConfig(tg Target) (id cmx.ID, body []byte, found bool, err error) {
	path := filepath.Join(s.o.Configs, tg.file()+".json")
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cmx.ID{}, nil, false, nil
	}
	if err != nil {
		return cmx.ID{}, nil, false, err
	}
	defer f.Close()
	// The modification time of the open file, so a replacement between two calls cannot pair one
	// version's bytes with another's time.
	fi, err := f.Stat()
	if err != nil {
		return cmx.ID{}, nil, false, err
	}
	if body, err = io.ReadAll(f); err != nil {
		return cmx.ID{}, nil, false, err
	}
	id = VersionID(body, fi.ModTime())
	if s.o.SignKey != nil {
		v := s.versions.next(tg, fi.ModTime().Unix(), body)
		if body, err = SignBody(s.o.SignKey, s.o.Dialect, tg, body, v); err != nil {
			return cmx.ID{}, nil, false, fmt.Errorf("%s: %w", path, err)
		}
	}
	return id, body, true, nil
}

// pushChange sends a changed configuration file to its endpoint (cmp7: to its observer).
func (s *server) pushChange(ctx context.Context, tg Target) {
	path := filepath.Join(s.o.Configs, tg.file()+".json")
	id, body, found, err := s.readConfig(tg)
	if err != nil {
		s.o.Logger.Error("cannot read configuration", "file", path, "err", err)
		return
	}
	if !found {
		return // removed again before the debounce ended
	}
	s.obsMu.Lock()
	observer := s.observers[tg]
	s.obsMu.Unlock()
	topic, payload, err := s.dia.push(cmx.Prefix(s.o.AppVersion, s.o.Extension, tg.Token), tg, id, body, 0, observer)
	if err != nil {
		s.o.Logger.Error("configuration not sent", "file", path, "err", err)
		return
	}
	if s.publish(ctx, tg, topic, payload) {
		s.o.Logger.Info("configuration pushed (file changed)", "endpoint", tg.String(), "id", id.Text(), "topic", topic, "bytes", len(body))
	}
}

// answer answers an agent's request with the folder's configuration.
func (s *server) answer(ctx context.Context, r request) {
	path := filepath.Join(s.o.Configs, r.target.file()+".json")
	id, body, found, err := s.readConfig(r.target)
	if err != nil {
		s.o.Logger.Error("cannot read configuration", "file", path, "err", err)
		return
	}
	if !found {
		s.o.Logger.Warn("no configuration for endpoint", "endpoint", r.target.String(), "file", path)
	}
	topic, payload, ok, err := s.dia.answer(r, found, id, body)
	if err != nil {
		s.o.Logger.Error("configuration not sent", "file", path, "err", err)
	}
	if ok && s.publish(ctx, r.target, topic, payload) {
		s.o.Logger.Info("request answered", "endpoint", r.target.String(), "id", id.Text(), "topic", topic, "payload_bytes", len(payload))
	}
}

func (s *server) publish(ctx context.Context, tg Target, topic string, payload []byte) bool {
	if err := wait(ctx, s.client.Publish(topic, 1, false, payload), "publish"); err != nil {
		s.o.Logger.Error("cannot send configuration", "endpoint", tg.String(), "topic", topic, "err", err)
		return false
	}
	return true
}

func (s *server) onMessage(ctx context.Context, m mqtt.Message) {
	t, ok := cmx.SplitTopic(m.Topic(), s.o.AppVersion, s.o.Extension)
	if !ok {
		return
	}
	if r, ok, err := s.dia.request(t, m.Topic(), m.Payload()); ok {
		if err != nil {
			s.o.Logger.Warn("bad request", "topic", m.Topic(), "err", err)
			if topic, payload, ok := s.dia.refuse(m.Topic(), err); ok {
				s.publish(ctx, r.target, topic, payload)
			}
			return
		}
		if r.observe {
			s.obsMu.Lock()
			s.observers[r.target] = r.topic
			s.obsMu.Unlock()
		}
		s.answer(ctx, r)
		return
	}
	if c, ok, err := s.dia.confirmation(t, m.Payload()); ok {
		if err != nil {
			s.o.Logger.Warn("bad confirmation", "topic", m.Topic(), "err", err)
			return
		}
		s.outMu.Lock()
		fmt.Fprintln(s.o.Out, c.String())
		s.outMu.Unlock()
		if s.o.OnConfirmation != nil {
			s.o.OnConfirmation(c)
		}
	}
}
