//go:build !linux

package store

// dropCache is a Linux matter (see cache_linux.go).
func dropCache(string) {}
