package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/cmx-agent/cmx-agent/engine"
)

// ImportRequest is the body of POST /v1/import: signed configurations (JWS objects), applied in
// this order.
type ImportRequest struct {
	Configurations []json.RawMessage `json:"configurations"`
}

// ImportResult is its answer, one result per configuration, in the same order.
type ImportResult struct {
	Results []engine.ImportResult `json:"results"`
}

// maxImportBytes bounds an import request: a USB stick's worth of configurations, each at most
// max_payload, but not without end.
const maxImportBytes = 64 << 20

// importWait bounds how long an import waits for the results, within the API socket's write
// timeout; one still being applied then is reported as such (status shows how it ends).
const importWait = 25 * time.Second

func (a *Agent) importHandler(w http.ResponseWriter, r *http.Request) {
	var req ImportRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxImportBytes))
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("import: want {\"configurations\": [JWS, ...]}: %v", err)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), importWait)
	defer cancel()
	writeJSON(w, http.StatusOK, ImportResult{Results: a.eng.Import(ctx, req.Configurations)})
}

// Import calls POST /v1/import.
func (c *APIClient) Import(ctx context.Context, configurations []json.RawMessage) (ImportResult, error) {
	body, err := json.Marshal(ImportRequest{Configurations: configurations})
	if err != nil {
		return ImportResult{}, fmt.Errorf("import: %w", err)
	}
	var r ImportResult
	err = c.send(ctx, http.MethodPost, "/v1/import", bytes.NewReader(body), &r)
	return r, err
}
