package cloud

import (
	"context"
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
	// cmx3 the entries array).
	Configs string
	// Share, when set, subscribes through $share/<Share>/ so that several servers on one broker
	// split the requests and confirmations between them instead of each answering every one.
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
}

type server struct {
	o      ServeOptions
	dia    dialect
	client mqtt.Client
	outMu  sync.Mutex
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
		return errors.New("serve: the application version is required")
	}
	dia, err := newDialect(o.Dialect)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(o.Configs); err != nil {
		return fmt.Errorf("serve: configurations folder: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("serve: %s is not a folder", o.Configs)
	}
	s := &server{o: o, dia: dia}

	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("serve: watch %s: %w", o.Configs, err)
	}
	defer watcher.Close()
	if err := watcher.Add(o.Configs); err != nil {
		return fmt.Errorf("serve: watch %s: %w", o.Configs, err)
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
		return fmt.Errorf("serve: %w", err)
	}
	defer s.client.Disconnect(250)
	select {
	case err := <-subscribed:
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
	case <-ctx.Done():
		return nil
	}
	o.Logger.Info("serving configurations", "folder", o.Configs, "broker", o.Broker, "app_version", o.AppVersion, "dialect", o.Dialect)
	if o.Ready != nil {
		o.Ready()
	}
	s.watch(ctx, watcher)
	return nil
}

// watch pushes a configuration file once it has been quiet for the debounce time.
func (s *server) watch(ctx context.Context, w *fsnotify.Watcher) {
	due := map[string]time.Time{}
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
				if key, ok := keyOf(filepath.Base(ev.Name)); ok {
					due[key] = time.Now().Add(s.o.Debounce)
				}
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			s.o.Logger.Warn("watching the configurations folder", "err", err)
		case <-timer.C:
			now := time.Now()
			for key, t := range due {
				if !t.After(now) {
					delete(due, key)
					s.pushFile(ctx, key, 0)
				}
			}
		}
	}
}

// keyOf maps a file name to the endpoint it configures; editors' temporary files do not count.
func keyOf(name string) (string, bool) {
	key, ok := strings.CutSuffix(name, ".json")
	if !ok || key == "" || strings.HasPrefix(key, ".") || !cmx.ValidLevel(key) {
		return "", false
	}
	return key, true
}

// VersionID names a version of a configuration file by its modification time and content, so a
// restarted server sends the same id for an unchanged file (the agent confirms it again without
// applying it twice), and a file changed back to older bytes still gets a new id.
func VersionID(body []byte, mod time.Time) cmx.ID {
	sum := sha256.Sum256(body)
	id, _ := ParseID("v" + strconv.FormatInt(mod.UnixMilli(), 10) + "-" + hex.EncodeToString(sum[:4]))
	return id
}

// pushFile sends DIR/<key>.json to the endpoint; reqID > 0 answers that request.
func (s *server) pushFile(ctx context.Context, key string, reqID uint64) {
	path := filepath.Join(s.o.Configs, key+".json")
	body, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		s.o.Logger.Warn("no configuration for endpoint", "endpoint", key, "file", path)
		return
	}
	if err != nil {
		s.o.Logger.Error("cannot read configuration", "file", path, "err", err)
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		s.o.Logger.Error("cannot read configuration", "file", path, "err", err)
		return
	}
	id := VersionID(body, fi.ModTime())
	prefix := cmx.Prefix(s.o.AppVersion, s.o.Extension, key)
	topic, payload, err := s.dia.push(prefix, id, body, reqID)
	if err != nil {
		s.o.Logger.Error("configuration not sent", "file", path, "err", err)
		return
	}
	tok := s.client.Publish(topic, 1, false, payload)
	if err := wait(ctx, tok, "publish"); err != nil {
		s.o.Logger.Error("cannot push configuration", "endpoint", key, "err", err)
		return
	}
	how := "pushed (file changed)"
	if reqID > 0 {
		how = "sent (answer to request " + strconv.FormatUint(reqID, 10) + ")"
	}
	s.o.Logger.Info("configuration "+how, "endpoint", key, "id", id.Text(), "topic", topic, "bytes", len(body))
}

func (s *server) onMessage(ctx context.Context, m mqtt.Message) {
	t, ok := cmx.SplitTopic(m.Topic(), s.o.AppVersion, s.o.Extension)
	if !ok {
		return
	}
	if _, reqID, ok, err := s.dia.request(t.Rest, m.Payload()); ok {
		if err != nil {
			s.o.Logger.Warn("bad request", "topic", m.Topic(), "err", err)
			return
		}
		s.pushFile(ctx, t.Token, reqID)
		return
	}
	if c, ok, err := s.dia.confirmation(t.Rest, m.Payload()); ok {
		if err != nil {
			s.o.Logger.Warn("bad confirmation", "topic", m.Topic(), "err", err)
			return
		}
		c.Token = t.Token
		s.outMu.Lock()
		fmt.Fprintln(s.o.Out, c.String())
		s.outMu.Unlock()
		if s.o.OnConfirmation != nil {
			s.o.OnConfirmation(c)
		}
	}
}
