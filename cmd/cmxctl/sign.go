package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/cmx-agent/cmx-agent/internal/cloud"
	"github.com/cmx-agent/cmx-agent/trust"
)

// cmdKeygen writes a signing key pair: NAME.key (PKCS#8 PEM, 0600) for the signer, NAME.pub
// (PKIX PEM) for the gateways' [trust] keys, and prints the key id signatures name it by.
func cmdKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	out := fs.String("o", "", "NAME: writes NAME.key (private, 0600) and NAME.pub (required)")
	if code, done := parse(fs, args, stdout, stderr, "keygen -o NAME",
		"write a signing key pair: NAME.key (PKCS#8 PEM, 0600, keep it offline) and NAME.pub (for the\ngateways' [trust] keys), and print the key's id (its RFC 7638 thumbprint)"); done {
		return code
	}
	if extraArgs(fs, stderr) {
		return 2
	}
	if *out == "" {
		fmt.Fprintln(stderr, "cmxctl keygen: -o NAME is required")
		return 2
	}
	kid, err := writeKeyPair(*out)
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl keygen:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s.key  private key: keep it offline, with the signer\n%s.pub  public key: list it in [trust] keys\nkid %s\n", *out, *out, kid)
	return 0
}

// writeKeyPair makes a key pair, writes NAME.key and NAME.pub, and returns the key's kid.
func writeKeyPair(name string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	privPEM, err := trust.EncodePrivateKey(priv)
	if err != nil {
		return "", err
	}
	pubPEM, err := trust.EncodePublicKey(pub)
	if err != nil {
		return "", err
	}
	if err := writeNew(name+".key", privPEM, 0o600); err != nil {
		return "", err
	}
	if err := writeNew(name+".pub", pubPEM, 0o644); err != nil {
		// Half a pair is no use, and a private key left behind is a risk: say so if it stays.
		if rerr := os.Remove(name + ".key"); rerr != nil {
			return "", fmt.Errorf("%w; and the private key %s.key could not be removed: %v", err, name, rerr)
		}
		return "", err
	}
	return trust.Thumbprint(pub), nil
}

// writeNew writes a file that must not exist yet: a key is never overwritten by accident.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; keys are not overwritten", path)
	}
	if err != nil {
		return err
	}
	// The umask may have taken bits away, never added: chmod makes the mode exact.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cmdSign(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	keyPath := fs.String("key", "", "the signer's private key, NAME.key (required)")
	token := fs.String("token", "", "endpoint token the configuration is for (required)")
	name := fs.String("name", "", "cmp7: named configuration")
	version := fs.Int64("version", 0, "version, ≥ 1 (default: the current Unix time)")
	expires := fs.Duration("expires", 0, "validity from now, e.g. 720h (default: no expiry)")
	idText := fs.String("id", "", "id an import confirms with: a number stays a number, anything else is a string")
	if code, done := parse(fs, args, stdout, stderr, "sign --key NAME.key --token T [--name N] [--version V] [--expires DUR] [--id ID] FILE",
		"print FILE's configuration signed for the endpoint (a JWS, EdDSA), ready for push, serve or\ncmx-agent import"); done {
		return code
	}
	if *keyPath == "" || *token == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "cmxctl sign: --key, --token and exactly one FILE are required")
		return 2
	}
	key, err := cloud.LoadSigningKey(*keyPath)
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl sign:", err)
		return 2
	}
	body, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl sign:", err)
		return 2
	}
	p := trust.Payload{Token: *token, Name: *name, Version: *version, Config: body}
	now := time.Now()
	if p.Version == 0 {
		p.Version = now.Unix()
	}
	if *expires > 0 {
		p.Expires = now.Add(*expires).Unix()
	}
	if *idText != "" {
		id, err := cloud.ParseID(*idText)
		if err != nil {
			fmt.Fprintln(stderr, "cmxctl sign: --id:", err)
			return 2
		}
		p.ID = json.RawMessage(id.JSON())
	}
	if !json.Valid(body) {
		fmt.Fprintf(stderr, "cmxctl sign: %s is not JSON\n", fs.Arg(0))
		return 2
	}
	env, err := trust.Sign(key, p)
	if err != nil {
		fmt.Fprintln(stderr, "cmxctl sign:", err)
		return 2
	}
	fmt.Fprintf(stdout, "%s\n", env)
	return 0
}
