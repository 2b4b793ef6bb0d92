package config

import "github.com/cmx-agent/cmx-agent/trust"

// Trust is the [trust] table: who may sign configurations, and whether unsigned ones are
// refused (CONTRACT section 6).
type Trust struct {
	// Keys are paths of Ed25519 public keys (PEM "PUBLIC KEY"), resolved like every path.
	Keys []string `toml:"keys"`
	// RequireSigned is the default of every endpoint's require_signed.
	RequireSigned bool `toml:"require_signed"`
	// Loaded holds Keys read and parsed when the file was loaded: a reload reads them again, so
	// rotating a key is editing the files and sending SIGHUP.
	Loaded []trust.Key `toml:"-"`
}

// trust reads [trust], reading every key file now so that `check` reports a key that is
// missing, unreadable or not an Ed25519 public key at its line.
func (d *decoder) trust(root table) Trust {
	var tr Trust
	t, ok := root.sub("trust")
	if !ok {
		return tr
	}
	t.unknown("keys", "require_signed")
	t.boolean("require_signed", &tr.RequireSigned)
	var paths []string
	t.strs("keys", &paths)
	if tr.RequireSigned && len(paths) == 0 {
		d.add(t.path("require_signed"), "trust.require_signed: true, but trust.keys lists no key: every configuration would be refused")
	}
	seen := map[string]int{}
	for i, p := range paths {
		at := t.path("keys", idxSeg(i))
		if p == "" {
			d.add(at, "trust.keys[%d]: must not be empty", i)
			continue
		}
		p = d.resolve(p)
		tr.Keys = append(tr.Keys, p)
		k, err := trust.LoadKey(p)
		if err != nil {
			d.add(at, "trust.keys[%d]: %v", i, err)
			continue
		}
		if first, dup := seen[k.KID]; dup {
			d.add(at, "trust.keys[%d]: %s is the same key as trust.keys[%d] (kid %s)", i, p, first, k.KID)
			continue
		}
		seen[k.KID] = i
		tr.Loaded = append(tr.Loaded, k)
	}
	return tr
}

// requireSigned reads an endpoint's require_signed. An endpoint can require signatures where
// [trust] does not, but not waive them where it does: a copied `require_signed = false` must not
// quietly open one endpoint of a gateway that requires signatures. Requiring them with no key to
// check them against is refused: every configuration would be.
func (d *decoder) requireSigned(t table, n int, tr Trust, dst *bool) {
	var own bool
	if t.boolean("require_signed", &own) && own && len(tr.Keys) == 0 && !tr.RequireSigned {
		// With trust.require_signed the same problem is reported once, there.
		d.add(t.path("require_signed"), "endpoint #%d require_signed: true, but trust.keys lists no key: every configuration would be refused", n)
	}
	*dst = own || tr.RequireSigned
}
