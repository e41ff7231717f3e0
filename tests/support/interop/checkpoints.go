// Command checkpoints checks FedCommons checkpoints and receipts with Go's
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog, as any
// transparency tool would: an interoperability test, not product code.
//
// It reads a JSON file (argument 1) naming the operator's verifier key, each
// witness's cosignature/v1 public key, the checkpoint notes with the witnesses
// expected on each, and the receipts' proofs; it prints a JSON report and
// exits 1 at the first check that fails.
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type input struct {
	OperatorVkey string            `json:"operator_vkey"`
	Witnesses    map[string]string `json:"witnesses"` // name -> base64 Ed25519 public key
	Notes        []struct {
		Note      string   `json:"note"`
		Witnesses []string `json:"witnesses"`
	} `json:"notes"`
	Receipts []struct {
		Checkpoint   string   `json:"checkpoint"`
		Index        int64    `json:"index"`
		Payload      string   `json:"payload"`
		Inclusion    []string `json:"inclusion"`
		PreviousSize int64    `json:"previous_size"`
		PreviousRoot string   `json:"previous_root"`
		Consistency  []string `json:"consistency"`
	} `json:"receipts"`
}

// cosigner verifies C2SP cosignature/v1 (timestamped Ed25519, type 0x04) lines;
// x/mod's note package knows only plain Ed25519, so the type is added here.
type cosigner struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func newCosigner(name string, key ed25519.PublicKey) *cosigner {
	h := sha256.Sum256(append(append([]byte(name+"\n"), 0x04), key...))
	return &cosigner{name, binary.BigEndian.Uint32(h[:4]), key}
}

func (c *cosigner) Name() string    { return c.name }
func (c *cosigner) KeyHash() uint32 { return c.hash }
func (c *cosigner) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
	return ed25519.Verify(c.key, signed, sig[8:])
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func hashOf(text string) tlog.Hash {
	raw, err := hex.DecodeString(text)
	if err != nil || len(raw) != tlog.HashSize {
		fail("%q is not a hex SHA-256", text)
	}
	var h tlog.Hash
	copy(h[:], raw)
	return h
}

func hashes(texts []string) []tlog.Hash {
	out := make([]tlog.Hash, len(texts))
	for i, t := range texts {
		out[i] = hashOf(t)
	}
	return out
}

// checkpoint parses a C2SP checkpoint's text: origin, size, base64 root.
func checkpoint(text string) (string, int64, tlog.Hash) {
	lines := strings.Split(text, "\n")
	if len(lines) != 4 || lines[3] != "" {
		fail("checkpoint text %q is not three lines", text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	root, err2 := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || err2 != nil || len(root) != tlog.HashSize {
		fail("checkpoint %q has a bad size or root", text)
	}
	var h tlog.Hash
	copy(h[:], root)
	return lines[0], size, h
}

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fail("input: %v", err)
	}
	operator, err := note.NewVerifier(in.OperatorVkey)
	if err != nil {
		fail("operator verifier key: %v", err)
	}
	known := []note.Verifier{operator}
	for name, key := range in.Witnesses {
		public, err := base64.StdEncoding.DecodeString(key)
		if err != nil || len(public) != ed25519.PublicKeySize {
			fail("witness %s: bad key", name)
		}
		known = append(known, newCosigner(name, public))
	}
	verifiers := note.VerifierList(known...)
	cosigned := map[string]int{}
	for i, n := range in.Notes {
		opened, err := note.Open([]byte(n.Note), verifiers)
		if err != nil {
			fail("note %d: note.Open: %v", i, err)
		}
		signers := map[string]bool{}
		for _, s := range opened.Sigs {
			signers[s.Name] = true
		}
		if !signers[operator.Name()] {
			fail("note %d: no verified operator signature", i)
		}
		for _, w := range n.Witnesses {
			if !signers[w] {
				fail("note %d: no verified cosignature by %s", i, w)
			}
			cosigned[w]++
		}
		if len(opened.UnverifiedSigs) != 0 {
			fail("note %d: %d signatures by unknown keys", i, len(opened.UnverifiedSigs))
		}
		origin, _, _ := checkpoint(opened.Text)
		if origin != operator.Name() {
			fail("note %d: origin %q is not the operator key's name", i, origin)
		}
	}
	records, trees := 0, 0
	for i, r := range in.Receipts {
		opened, err := note.Open([]byte(r.Checkpoint), verifiers)
		if err != nil {
			fail("receipt %d: note.Open: %v", i, err)
		}
		_, size, root := checkpoint(opened.Text)
		leaf := tlog.RecordHash([]byte(r.Payload))
		if err := tlog.CheckRecord(hashes(r.Inclusion), size, root, r.Index, leaf); err != nil {
			fail("receipt %d: tlog.CheckRecord: %v", i, err)
		}
		records++
		if r.PreviousSize > 0 {
			old := hashOf(r.PreviousRoot)
			if err := tlog.CheckTree(hashes(r.Consistency), size, root, r.PreviousSize, old); err != nil {
				fail("receipt %d: tlog.CheckTree: %v", i, err)
			}
			trees++
		}
	}
	report, _ := json.Marshal(map[string]interface{}{
		"notes_opened": len(in.Notes), "cosignatures": cosigned,
		"records_checked": records, "trees_checked": trees,
	})
	fmt.Println(string(report))
}
