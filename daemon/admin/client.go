package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// Client talks to a node's admin API with an admin certificate.
type Client struct {
	base string
	http *http.Client
}

// ClientConfig names a node's admin API and the files of the admin certificate.
type ClientConfig struct {
	// URL is the API's base, e.g. https://127.0.0.1:9443.
	URL string
	// Cert and Key are the admin client certificate and its key.
	Cert, Key string
	// CA is the CA that signed the API's server certificate.
	CA string
}

// NewClient returns a Client for the API c names.
func NewClient(c ClientConfig) (*Client, error) {
	if c.URL == "" || c.Cert == "" || c.Key == "" || c.CA == "" {
		return nil, errors.New("admin: ClientConfig URL, Cert, Key and CA are all required")
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("admin certificate %s / %s: %w", c.Cert, c.Key, err)
	}
	pool, err := pemfile.LoadPool(c.CA)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return &Client{base: strings.TrimSuffix(c.URL, "/"), http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

// URL returns the API's base URL.
func (c *Client) URL() string { return c.base }

// Revoke revokes key on the node's store; the response says how many of this node's live
// conns it matched.
func (c *Client) Revoke(ctx context.Context, key revoke.Key, reason revoke.Reason) (RevokeResponse, error) {
	var resp RevokeResponse
	err := c.do(ctx, "POST", "/v1/revocations", RevokeRequest{Key: string(key), Reason: string(reason)}, &resp)
	return resp, err
}

// Unrevoke removes key; an error if it was not revoked.
func (c *Client) Unrevoke(ctx context.Context, key revoke.Key) error {
	return c.do(ctx, "DELETE", "/v1/revocations?key="+url.QueryEscape(string(key)), nil, nil)
}

// Revocations returns the entries in force on the node.
func (c *Client) Revocations(ctx context.Context) ([]revoke.Entry, error) {
	var entries []revoke.Entry
	err := c.do(ctx, "GET", "/v1/revocations", nil, &entries)
	return entries, err
}

// Conns returns the node's live conns.
func (c *Client) Conns(ctx context.Context) ([]Conn, error) {
	var conns []Conn
	err := c.do(ctx, "GET", "/v1/conns", nil, &conns)
	return conns, err
}

// CloseConn closes one live conn by ID, without revoking its certificate.
func (c *Client) CloseConn(ctx context.Context, id uint64) error {
	return c.do(ctx, "DELETE", "/v1/conns?id="+strconv.FormatUint(id, 10), nil, nil)
}

// CRLs returns the CRLs in force on the node.
func (c *Client) CRLs(ctx context.Context) ([]CRL, error) {
	var views []CRL
	err := c.do(ctx, "GET", "/v1/crls", nil, &views)
	return views, err
}

// Fleet returns every live node's heartbeat (the node's own, without Redis).
func (c *Client) Fleet(ctx context.Context) ([]redisfeed.NodeStatus, error) {
	var nodes []redisfeed.NodeStatus
	err := c.do(ctx, "GET", "/v1/fleet", nil, &nodes)
	return nodes, err
}

// WaitApplied polls the fleet until every live node has applied version, or ctx ends, as
// redisfeed.Store.WaitApplied does.
func (c *Client) WaitApplied(ctx context.Context, version uint64) (nodes []redisfeed.NodeStatus, missing []string, err error) {
	return redisfeed.WaitApplied(ctx, version, c.Fleet)
}

// Reseed shows, and with apply writes back, the node's entries that Redis lacks.
func (c *Client) Reseed(ctx context.Context, apply bool) (ReseedResponse, error) {
	var resp ReseedResponse
	err := c.do(ctx, "POST", "/v1/reseed", ReseedRequest{Apply: apply}, &resp)
	return resp, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if strings.Contains(err.Error(), "tls: bad certificate") {
			// The admin listener refuses, in the handshake, a certificate admin.allow does
			// not list (or that the admin CA did not issue).
			return fmt.Errorf("admin API %s: this certificate is not an admin: the node refused it in the TLS handshake (admin.allow, admin.client_ca): %w", c.base, err)
		}
		return fmt.Errorf("admin API %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("admin API: %s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("admin API: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}
