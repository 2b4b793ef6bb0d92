package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in TOML as a string in Go's syntax
// ("30s", "1m30s").
type Duration struct{ time.Duration }

// UnmarshalText parses Go's duration syntax.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("parse duration: %w", err)
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration in the syntax UnmarshalText reads.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// Size is a number of bytes, written in TOML as a string with a unit
// ("1MiB", "512KiB", "2MB", "100B") or as a plain integer of bytes.
type Size int64

// UnmarshalText parses a size with an optional unit: B, kB (or KB), MB, GB,
// TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024). Digits alone
// are bytes.
func (s *Size) UnmarshalText(text []byte) error {
	v, err := parseSize(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// MarshalText writes the size with the largest binary unit that divides it
// exactly, so that the text parses back to the same size.
func (s Size) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// String formats the size like MarshalText.
func (s Size) String() string {
	n := int64(s)
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

func sizeUnit(unit string) (int64, bool) {
	switch unit {
	case "", "B":
		return 1, true
	case "kB", "KB":
		return 1000, true
	case "MB":
		return 1000 * 1000, true
	case "GB":
		return 1000 * 1000 * 1000, true
	case "TB":
		return 1000 * 1000 * 1000 * 1000, true
	case "KiB":
		return 1 << 10, true
	case "MiB":
		return 1 << 20, true
	case "GiB":
		return 1 << 30, true
	case "TiB":
		return 1 << 40, true
	}
	return 0, false
}

func parseSize(text string) (Size, error) {
	s := strings.TrimSpace(text)
	end := 0
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	if end == 0 {
		return 0, fmt.Errorf("parse size %q: want digits followed by a unit such as B, KiB, MiB, kB, MB", text)
	}
	mult, ok := sizeUnit(strings.TrimLeft(s[end:], " "))
	if !ok {
		return 0, fmt.Errorf("parse size %q: unknown unit %q (want B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)", text, strings.TrimLeft(s[end:], " "))
	}
	n, err := strconv.ParseInt(s[:end], 10, 64)
	if err != nil || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("parse size %q: too large", text)
	}
	return Size(n * mult), nil
}

// FileMode is the permission bits of a file, written in TOML as a string of
// octal digits ("0644" or "644"). Only permission bits are accepted: setuid,
// setgid and sticky bits are refused.
type FileMode os.FileMode

// UnmarshalText parses octal permission bits no larger than 0777.
func (m *FileMode) UnmarshalText(text []byte) error {
	v, err := parseFileMode(string(text))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalText writes the mode as four octal digits, e.g. "0644".
func (m FileMode) MarshalText() ([]byte, error) {
	return []byte(m.String()), nil
}

// String formats the mode as four octal digits, e.g. "0644".
func (m FileMode) String() string {
	return fmt.Sprintf("%04o", uint32(m))
}

// Perm returns the mode as an os.FileMode for os.Chmod and friends.
func (m FileMode) Perm() os.FileMode {
	return os.FileMode(m).Perm()
}

func parseFileMode(text string) (FileMode, error) {
	if text == "" {
		return 0, errors.New("parse mode: empty, want octal digits such as \"0644\"")
	}
	for _, c := range text {
		if c < '0' || c > '7' {
			return 0, fmt.Errorf("parse mode %q: want octal digits such as \"0644\"", text)
		}
	}
	v, err := strconv.ParseUint(text, 8, 32)
	if err != nil || v > 0o777 {
		return 0, fmt.Errorf("parse mode %q: larger than 0777 (only permission bits are allowed)", text)
	}
	return FileMode(v), nil
}
