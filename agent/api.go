package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cmx-agent/cmx-agent/config"
	"github.com/cmx-agent/cmx-agent/engine"
	"github.com/cmx-agent/cmx-agent/transport"
)

// The local API: HTTP + JSON on the unix socket [agent] socket. `cmx-agent status` and `cmx-agent
// sync` use it because the running agent holds the database lock; nothing else may open the
// database while the agent runs.

// APIGroup is the group given to the socket when it exists, so operators in that group can query
// the agent without being root.
const APIGroup = "cmx-agent"

// Status is the agent's state as GET /v1/status returns it.
type Status struct {
	Connected bool   `json:"connected"`
	Server    string `json:"server,omitempty"`     // broker of the live connection
	LastError string `json:"last_error,omitempty"` // last connection error while disconnected
	// Degraded says, while connected, what of the subscription the broker did not grant: topics it
	// refused, or QoS 1 (then when QoS 1 is tried again); see docs/brokers.md.
	Degraded string `json:"degraded,omitempty"`
	Dialect  string `json:"dialect"`
	// Recipient is the agent's age recipient, to which configurations seal values.
	Recipient string `json:"recipient"`
	// Endpoints are sorted by key.
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint in Status.
type EndpointStatus = engine.EndpointStatus

// History is the answer of GET /v1/history: per endpoint, sorted by key, the applied
// configurations, newest first.
type History struct {
	Endpoints []EndpointHistory `json:"endpoints"`
}

// EndpointHistory is one endpoint in History.
type EndpointHistory = engine.EndpointHistory

// History reports the applied configurations of the endpoint with key, or of every endpoint when
// key is ""; engine.ErrUnknownEndpoint for a key no endpoint has.
func (a *Agent) History(key string) (History, error) {
	hs, err := a.eng.History(key)
	if err != nil {
		return History{}, err
	}
	return History{Endpoints: hs}, nil
}

// SyncResult is the answer of POST /v1/sync.
type SyncResult struct {
	Requested int `json:"requested"` // endpoints asked for
}

// ErrNotConnected is returned by Sync while the agent has no broker connection.
var ErrNotConnected = errors.New("not connected to the broker; the agent asks for the latest configuration as soon as it connects")

// Status reports the connection and every endpoint's state. It only reads the store, so it is safe
// to call at any time after New.
func (a *Agent) Status() (Status, error) {
	st := Status{Dialect: a.config().Kaa.Dialect, Recipient: a.eng.Recipient(), Endpoints: []EndpointStatus{}}
	c := a.Connection()
	st.Connected, st.Server, st.LastError = c.Connected, c.Server, c.LastError
	if !c.Connected {
		st.Server = "" // Server names the live connection only
	}
	st.Degraded = degraded(c)
	eps, err := a.eng.Endpoints()
	if err != nil {
		return Status{}, err
	}
	st.Endpoints = append(st.Endpoints, eps...)
	sortEndpoints(st.Endpoints)
	return st, nil
}

// degraded is Status.Degraded for c.
func degraded(c transport.ConnState) string {
	if !c.Connected {
		return ""
	}
	var parts []string
	if len(c.RefusedFilters) > 0 {
		parts = append(parts, "the broker refused the subscription to "+strings.Join(c.RefusedFilters, ", ")+
			" (its ACL?): those endpoints receive nothing")
	}
	if c.QoS == 0 {
		const lost = "; pushes made while disconnected are lost, the latest configuration is requested at every connection"
		if c.QoS1RetryAt.IsZero() {
			parts = append(parts, "subscribed at QoS 0: the broker grants no more"+lost)
		} else {
			parts = append(parts, "subscribed at QoS 0: the broker refuses this client id a QoS 1 subscription"+lost+
				"; QoS 1 is tried again at "+c.QoS1RetryAt.Format(time.RFC3339))
		}
	}
	return strings.Join(parts, "; and ")
}

func sortEndpoints(es []EndpointStatus) {
	slices.SortFunc(es, func(x, y EndpointStatus) int { return strings.Compare(x.Key, y.Key) })
}

// Sync asks the server for the latest configuration of every endpoint now, on the live connection.
func (a *Agent) Sync() (SyncResult, error) {
	n, ok := a.eng.Sync()
	if !ok {
		return SyncResult{}, ErrNotConnected
	}
	return SyncResult{Requested: n}, nil
}

// Healthy reports whether the agent can still do its work: the store answers within ctx. The
// service manager's watchdog is fed only while this holds.
func (a *Agent) Healthy(ctx context.Context) error { return a.eng.Healthy(ctx) }

// StatusLine is a one-line summary of st for the service manager (systemctl status shows it).
func StatusLine(st Status) string {
	var b strings.Builder
	if st.Connected {
		b.WriteString("connected to " + st.Server)
	} else {
		b.WriteString("not connected")
	}
	applied := 0
	var (
		latest  *EndpointStatus
		damaged []string
	)
	for i := range st.Endpoints {
		e := &st.Endpoints[i]
		if e.Damaged != "" {
			// What its record held is not known: neither counted as applied nor as not.
			damaged = append(damaged, e.Key)
			continue
		}
		if !e.Applied {
			continue
		}
		applied++
		if latest == nil || e.AppliedAt.After(latest.AppliedAt) {
			latest = e
		}
	}
	switch {
	case len(st.Endpoints) == 1 && len(damaged) == 1:
	case len(st.Endpoints) == 1 && latest != nil:
		fmt.Fprintf(&b, "; applied %s", idOrNone(latest.AppliedID))
	case len(st.Endpoints) == 1:
		b.WriteString("; nothing applied yet")
	case latest != nil:
		fmt.Fprintf(&b, "; %d/%d endpoints applied, latest %s %s", applied, len(st.Endpoints), latest.Key, idOrNone(latest.AppliedID))
	default:
		fmt.Fprintf(&b, "; 0/%d endpoints applied", len(st.Endpoints))
	}
	if len(damaged) > 0 {
		b.WriteString("; state record damaged: " + strings.Join(damaged[:min(len(damaged), maxNamed)], ", "))
		if len(damaged) > maxNamed {
			fmt.Fprintf(&b, " and %d more", len(damaged)-maxNamed)
		}
	}
	return b.String()
}

// maxNamed bounds the endpoints StatusLine names, so the line stays a line with 1,000 endpoints.
const maxNamed = 3

func idOrNone(id string) string {
	if id == "" {
		return "(no id)"
	}
	return id
}

// listenAPI binds the local API's socket; ok is false when there is none to serve (not configured,
// or it cannot be bound: logged, and the agent goes on without it). Run binds it before it connects,
// so that the API answers once the agent says it is connected.
func (a *Agent) listenAPI() (ln apiListener, path string, ok bool) {
	path = a.config().Agent.Socket
	if path == "" {
		return ln, path, false
	}
	ln, err := listenSocket(path)
	if err != nil {
		a.log.Error("local API unavailable", "socket", path, "err", err)
		return ln, path, false
	}
	a.log.Debug("local API listening", "socket", path)
	return ln, path, true
}

// serveAPI serves the local API on ln until ctx ends, then removes the socket.
func (a *Agent) serveAPI(ctx context.Context, ln apiListener, path string) {
	if err := serveHTTP(ctx, ln, a.apiHandler(), a.apiLimits, a.log.With("socket", path)); err != nil {
		a.log.Error("local API stopped", "socket", path, "err", err)
	}
	// Only remove the socket if it is still ours: a new agent may already have replaced it.
	if fi, err := os.Stat(path); err == nil && ln.owns(fi) {
		os.Remove(path)
	}
}

type apiListener struct {
	net.Listener
	fi os.FileInfo
}

func (l apiListener) owns(fi os.FileInfo) bool { return os.SameFile(l.fi, fi) }

// socketTempName is where the API socket at path is bound before it is renamed into place: beside
// it (a rename cannot cross file systems), named after it so that it touches no other file, and
// only 2 bytes longer, because a unix socket's path has 107 bytes at most (config keeps the
// socket's path at 105). A second agent configured with the same socket finds the first
// answering on path (with the same state folder, it cannot even open the database the first
// holds), so only two agents started at the same instant could meet here, as at path itself.
func socketTempName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+"~")
}

// listenSocket binds under a temporary name, sets mode 0660 and the group, and only then renames
// the socket into place: a client never sees it with the umask's permissions.
func listenSocket(path string) (apiListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return apiListener{}, fmt.Errorf("socket folder: %w", err)
	}
	if err := config.CheckSocketPath(path); err != nil {
		return apiListener{}, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return apiListener{}, fmt.Errorf("%s: another process answers on it", path)
	}
	tmp := socketTempName(path)
	os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return apiListener{}, fmt.Errorf("listen: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	fail := func(err error) (apiListener, error) {
		ln.Close()
		os.Remove(tmp)
		return apiListener{}, err
	}
	if err := os.Chmod(tmp, 0o660); err != nil {
		return fail(fmt.Errorf("socket mode: %w", err))
	}
	if g, err := user.LookupGroup(APIGroup); err == nil {
		// Under the service the socket already has the agent's group; chown only when it differs,
		// as a hardened unit may not allow the call at all.
		if gid, err := strconv.Atoi(g.Gid); err == nil && gid != os.Getegid() {
			if err := os.Chown(tmp, -1, gid); err != nil {
				return fail(fmt.Errorf("socket group %s: %w", APIGroup, err))
			}
		}
	}
	// Checked again just before the rename, which would replace whatever is there: only a socket
	// left by a stopped agent may go.
	if err := config.CheckSocketPath(path); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	return apiListener{Listener: ln, fi: fi}, nil
}

func (a *Agent) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := a.Status()
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/history", func(w http.ResponseWriter, r *http.Request) {
		h, err := a.History(r.URL.Query().Get("endpoint"))
		switch {
		case errors.Is(err, engine.ErrUnknownEndpoint):
			writeJSON(w, http.StatusNotFound, apiError{err.Error()})
		case err != nil:
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
		default:
			writeJSON(w, http.StatusOK, h)
		}
	})
	mux.HandleFunc("GET /metrics", a.metricsHandler)
	mux.HandleFunc("POST /v1/import", a.importHandler)
	mux.HandleFunc("POST /v1/sync", func(w http.ResponseWriter, r *http.Request) {
		res, err := a.Sync()
		if errors.Is(err, ErrNotConnected) {
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
			return
		}
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, apiError{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return mux
}

type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
