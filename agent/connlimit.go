package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimits bound what local clients can hold of the agent's HTTP servers (the API socket and the
// metrics listener): connections at once, and how long one may take to send its request, to take
// the answer, or to sit idle between requests. Without them a client that opens connections and
// sends nothing, or sends half a request and waits, holds goroutines and memory for ever.
type connLimits struct {
	maxConns       int           // more at once are closed as soon as they are accepted
	header         time.Duration // to send the request line and headers
	read           time.Duration // to send the whole request
	write          time.Duration // from the end of the headers to the end of the answer
	idle           time.Duration // between requests on a kept-alive connection
	maxHeaderBytes int
}

// serveHTTP serves h on ln within l until ctx ends, then gives requests in progress a second to
// finish. It returns nil on a stop by ctx. Connections closed over the cap are logged on log (which
// names the listener), at most once a minute.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, l connLimits, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.header,
		ReadTimeout:       l.read,
		WriteTimeout:      l.write,
		IdleTimeout:       l.idle,
		MaxHeaderBytes:    l.maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(&limitListener{Listener: ln, slots: make(chan struct{}, l.maxConns), log: log})
	if errors.Is(err, http.ErrServerClosed) {
		<-done // Shutdown has returned: no request is served any more
		return nil
	}
	return fmt.Errorf("serve: %w", err)
}

// apiConnLimits are the API socket's: status, sync and metrics for the CLI and local tools, each
// of which needs one connection for well under a second.
func apiConnLimits() connLimits {
	return connLimits{maxConns: 32, header: 5 * time.Second, read: 10 * time.Second,
		write: 30 * time.Second, idle: 10 * time.Second, maxHeaderBytes: 8 << 10}
}

// metricsConnLimits are the metrics listener's: a scraper or two.
func metricsConnLimits() connLimits {
	l := apiConnLimits()
	l.maxConns = 16
	return l
}

// limitListener hands out at most cap(slots) connections at once. One over the cap is closed at
// once rather than waiting for a slot: a flood then costs no goroutine and no buffer, and a
// client that is turned away learns it immediately.
type limitListener struct {
	net.Listener
	slots chan struct{}
	log   *slog.Logger
	// Only Accept uses these, and http.Server calls it from one goroutine.
	closed   int       // over the cap since the last warning
	lastWarn time.Time // zero: none yet
}

// Accept returns the next connection within the cap, closing those over it.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			c.Close()
			l.closed++
			if time.Since(l.lastWarn) >= time.Minute {
				l.log.Warn("local connections closed: too many open at once", "closed", l.closed, "max", cap(l.slots))
				l.closed, l.lastWarn = 0, time.Now()
			}
		}
	}
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Close gives the slot back before closing, so that a client which sees this connection end
// finds the slot free.
func (c *limitConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
