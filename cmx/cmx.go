// Package cmx is the Kaa Configuration Management Extension as cmx-agent speaks it: topic names, the
// messages of the seed dialect 3/CMX, their parsing with limits, and the status texts sent back to the
// server. It does no I/O: the agent feeds it topics and payloads and publishes what it returns.
//
// Topics follow 1/KP: every topic starts with kp1/<app_version>/<extension>/<token>, and a last topic
// level that is a positive integer is a request ID, not part of the resource path.
package cmx

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Prefix returns the topic prefix kp1/<app>/<ext>/<token> of an endpoint.
func Prefix(appVersion, extension, token string) string {
	return "kp1/" + appVersion + "/" + extension + "/" + token
}

// ValidLevel reports whether s can stand as one MQTT topic level of a published topic (see
// CheckLevel).
func ValidLevel(s string) bool { return CheckLevel(s) == nil }

// CheckLevel says why s cannot stand as one MQTT topic level of a published topic: empty, a
// separator or wildcard, a NUL, or not UTF-8. The error completes "it ...".
func CheckLevel(s string) error {
	switch {
	case s == "":
		return errors.New("it is empty")
	case !utf8.ValidString(s):
		return errors.New("it is not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return errors.New("it contains a NUL byte")
	}
	if i := strings.IndexAny(s, "/+#"); i >= 0 {
		return fmt.Errorf("it contains %q", s[i])
	}
	return nil
}

// IsRequestID reports whether a topic level is a 1/KP request ID: a positive integer, written without
// a sign or leading zeros.
func IsRequestID(level string) bool {
	if level == "" || level[0] == '0' {
		return false
	}
	for i := 0; i < len(level); i++ {
		if level[i] < '0' || level[i] > '9' {
			return false
		}
	}
	return true
}

// Topic is a topic split into the endpoint it addresses and the extension's resource levels after the
// token.
type Topic struct {
	Token string
	Rest  []string
}

// SplitTopic splits topic into token and resource levels if it starts with kp1/<app>/<ext>/. It
// reports false for topics of other applications or extensions.
func SplitTopic(topic, appVersion, extension string) (Topic, bool) {
	head := "kp1/" + appVersion + "/" + extension + "/"
	rest, ok := strings.CutPrefix(topic, head)
	if !ok {
		return Topic{}, false
	}
	levels := strings.Split(rest, "/")
	if len(levels) < 2 || levels[0] == "" {
		return Topic{}, false
	}
	return Topic{Token: levels[0], Rest: levels[1:]}, true
}
