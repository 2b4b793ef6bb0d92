package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// APIClient talks to a running agent over its local socket. It never opens the database.
type APIClient struct {
	socket string
	http   *http.Client
}

// NewAPIClient returns a client for the agent listening on socket.
func NewAPIClient(socket string) *APIClient {
	return &APIClient{
		socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			// Calls are few and a local connection is cheap; a kept-alive one would hold one of
			// the socket's few connection slots until the agent's idle timeout.
			DisableKeepAlives: true,
		}},
	}
}

// Status fetches GET /v1/status.
func (c *APIClient) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

// History fetches GET /v1/history for the endpoint with key, or for every endpoint when key is "".
func (c *APIClient) History(ctx context.Context, key string) (History, error) {
	path := "/v1/history"
	if key != "" {
		path += "?endpoint=" + url.QueryEscape(key)
	}
	var h History
	err := c.do(ctx, http.MethodGet, path, &h)
	return h, err
}

// Sync calls POST /v1/sync.
func (c *APIClient) Sync(ctx context.Context) (SyncResult, error) {
	var r SyncResult
	err := c.do(ctx, http.MethodPost, "/v1/sync", &r)
	return r, err
}

// APIError is an answer of the agent other than success.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *APIClient) do(ctx context.Context, method, path string, out any) error {
	return c.send(ctx, method, path, nil, out)
}

// send is do with a request body.
func (c *APIClient) send(ctx context.Context, method, path string, in io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://cmx-agent"+path, in)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("no agent answers on %s: %w", c.socket, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(body))
		}
		return &APIError{Code: resp.StatusCode, Message: e.Error}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	return nil
}

func unwrapURLError(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		next := u.Unwrap()
		if next == nil {
			return err
		}
		if _, isOp := next.(*net.OpError); isOp {
			return next
		}
		err = next
	}
}
