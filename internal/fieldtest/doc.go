// Package fieldtest runs the real cmx-agent binary against brokers as gateways meet them in the
// field: a chain of mosquitto bridges (gateway broker, middle hop, cloud broker) and a 3-node
// RabbitMQ cluster. The suites drive the agent through its outside contract only: its
// configuration file, MQTT topics, output files and the status of its local API.
//
// The bridge suite always runs (it needs Debian's mosquitto). The RabbitMQ suite runs with
// CMX_RABBITMQ_TEST=1 and a cluster started by scripts/rabbitmq-cluster; CMX_RABBITMQ_DIR names
// that cluster's folder (default /tmp/cmx-rabbitmq).
package fieldtest
