package main

import "fmt"

// countEndpoints is "1 endpoint" or "N endpoints", for lines people read.
func countEndpoints(n int) string {
	if n == 1 {
		return "1 endpoint"
	}
	return fmt.Sprintf("%d endpoints", n)
}
