package mqtttest

import "syscall"

// sysProcAttr kills the broker with the test binary, so a test run that is
// itself killed (go test -timeout) leaves no mosquitto holding a port.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
