package redisfeed

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"
)

// SetLogger sends the go-redis client's own log lines — dial failures and pool errors,
// which it otherwise prints to stderr unstructured, several a second while Redis is down —
// to log at Warn, as message "redis client" with the client's text under "detail". Give it
// a rate-limited logger. go-redis keeps one logger per process: the last call wins.
func SetLogger(log *slog.Logger) { redis.SetLogger(clientLog{log}) }

type clientLog struct{ log *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	c.log.WarnContext(ctx, "redis client", "detail", strings.TrimSpace(fmt.Sprintf(format, v...)))
}
