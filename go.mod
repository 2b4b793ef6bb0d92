module github.com/cmx-agent/cmx-agent

go 1.26.8

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/eclipse/paho.mqtt.golang v1.5.1
	go.etcd.io/bbolt v1.4.3
	golang.org/x/net v0.44.0
)

require (
	github.com/gorilla/websocket v1.5.3 // indirect
	golang.org/x/sync v0.17.0 // indirect
	golang.org/x/sys v0.36.0 // indirect
)
