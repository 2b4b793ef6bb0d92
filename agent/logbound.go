package agent

import (
	"context"
	"fmt"
	"log/slog"
	"unicode/utf8"
)

// maxLogValue bounds every string the agent logs (message, attribute value, error text). Topics,
// ids and error texts can carry what the network sent; one hostile push must not become a megabyte
// journal line.
const maxLogValue = 512

// boundedHandler truncates long strings in every record before its handler sees them.
type boundedHandler struct{ h slog.Handler }

func boundLogger(l *slog.Logger) *slog.Logger {
	if _, ok := l.Handler().(boundedHandler); ok {
		return l
	}
	return slog.New(boundedHandler{l.Handler()})
}

func (b boundedHandler) Enabled(ctx context.Context, l slog.Level) bool { return b.h.Enabled(ctx, l) }

func (b boundedHandler) Handle(ctx context.Context, r slog.Record) error {
	nr := slog.NewRecord(r.Time, r.Level, bound(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(boundAttr(a))
		return true
	})
	return b.h.Handle(ctx, nr)
}

func (b boundedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = boundAttr(a)
	}
	return boundedHandler{b.h.WithAttrs(out)}
}

func (b boundedHandler) WithGroup(name string) slog.Handler {
	return boundedHandler{b.h.WithGroup(name)}
}

func boundAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		if s := v.String(); len(s) > maxLogValue {
			return slog.String(a.Key, bound(s))
		}
	case slog.KindGroup:
		g := v.Group()
		out := make([]slog.Attr, len(g))
		for i, ga := range g {
			out[i] = boundAttr(ga)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	case slog.KindAny:
		var s string
		if err, ok := v.Any().(error); ok {
			s = err.Error()
		} else {
			s = fmt.Sprint(v.Any())
		}
		if len(s) > maxLogValue {
			return slog.String(a.Key, bound(s))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// bound cuts s to maxLogValue bytes on a character boundary and says how much was left out.
func bound(s string) string {
	if len(s) <= maxLogValue {
		return s
	}
	cut := maxLogValue
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d more bytes)", s[:cut], len(s)-cut)
}
