package config

import "os"

// secretFile refuses a password or key file that every user can read: whoever reads it can act as
// the gateway towards the broker. The agent refuses it at each connection too; reporting it here
// makes `check` say so before the agent runs.
func (t table) secretFile(key, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return // reported by readableFile
	}
	if m := fi.Mode().Perm(); m&0o004 != 0 {
		t.d.add(t.path(key), "%s%s: %s is readable by every user (mode %04o); run chmod o-rwx on it", t.label, key, path, m)
	}
}
