//go:build !linux

package engine

// dropCache is a Linux matter (see store_cache_linux.go).
func dropCache(string) {}
