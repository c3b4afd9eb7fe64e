package reconcilers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	eventv1 "github.com/fluxcd/pkg/apis/event/v1beta1"
	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	sourcev1 "github.com/fluxcd/source-controller/api/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	gitsrc "github.com/sourceraft/sourceraft/sources/git"
)

// Reasons of a False SourceVerified on a GitRepository, Flux's.
const (
	// VerificationErrorReason: the public keys secret cannot be read.
	VerificationErrorReason = "VerificationError"
	// InvalidVerificationModeReason: spec.verify.mode asks for a tag's
	// signature but spec.ref names no tag.
	InvalidVerificationModeReason = "InvalidVerificationMode"
	// InvalidGitObjectReason: the tag to verify is not signed.
	InvalidGitObjectReason = "InvalidGitObject"
	// InvalidTagSignatureReason: the tag's signature does not verify.
	InvalidTagSignatureReason = "InvalidTagSignature"
	// InvalidCommitSignatureReason: the commit's signature does not verify.
	InvalidCommitSignatureReason = "InvalidCommitSignature"
)

// verifySignature checks the signatures spec.verify.mode asks for, of the
// checked-out commit (HEAD), of the tag spec.ref resolved through (Tag),
// or both (TagAndHEAD), against the keys of spec.verify.secretRef. It runs
// before anything is built, so an unverified commit never becomes an
// artifact and the previous one stays.
//
// Sets SourceVerified=True with the verified objects and keys and
// status.sourceVerificationMode on success; SourceVerified=False on
// failure (a Tag mode without a tag reference also stalls). Removes both
// when spec.verify is gone or names no mode.
func (r *GitRepositoryReconciler) verifySignature(ctx context.Context, obj *sourcev1.GitRepository, commit *gitsrc.Commit) (Result, error) {
	v := obj.Spec.Verification
	if v == nil || v.Mode == "" {
		obj.Status.SourceVerificationMode = nil
		conditions.Delete(obj, sourcev1.SourceVerifiedCondition)
		return ResultSuccess, nil
	}
	unverified := func(e *Error) (Result, error) {
		conditions.MarkFalse(obj, sourcev1.SourceVerifiedCondition, e.Reason, "%s", e)
		return ResultEmpty, e
	}

	secret := &corev1.Secret{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: v.SecretRef.Name}, secret); err != nil {
		return unverified(NewGeneric(fmt.Errorf("public keys secret error: %w", err), VerificationErrorReason))
	}
	keys := gitsrc.PublicKeysFromSecret(secret.Data)

	var msg strings.Builder
	if v.VerifyTag() {
		tag := commit.Tag
		if tag == nil {
			return unverified(NewStalling(errors.New("cannot verify tag object's signature if a tag reference is not specified"), InvalidVerificationModeReason))
		}
		// Not stalled: the tag upstream may be replaced by a signed one.
		if !tag.Signed() {
			return unverified(NewGeneric(fmt.Errorf("cannot verify signature of tag '%s' since it is not signed", tag), InvalidGitObjectReason))
		}
		key, err := tag.Verify(keys)
		if err != nil {
			return unverified(NewGeneric(fmt.Errorf("signature verification of tag '%s' failed: %w", tag, err), InvalidTagSignatureReason))
		}
		fmt.Fprintf(&msg, "verified signature of\n\t- tag '%s' with key '%s'", tag, key)
	}
	if v.VerifyHEAD() {
		key, err := commit.Verify(keys)
		if err != nil {
			return unverified(NewGeneric(fmt.Errorf("signature verification of commit '%s' failed: %w", commit.Hash, err), InvalidCommitSignatureReason))
		}
		if msg.Len() == 0 {
			msg.WriteString("verified signature of")
		}
		fmt.Fprintf(&msg, "\n\t- commit '%s' with key '%s'", commit.Hash, key)
	}

	mode := v.GetMode()
	obj.Status.SourceVerificationMode = &mode
	conditions.MarkTrue(obj, sourcev1.SourceVerifiedCondition, meta.SucceededReason, "%s", msg.String())
	ctrl.LoggerFrom(ctx).Info(msg.String())
	r.AnnotatedEventf(obj, nil, eventv1.EventTypeTrace, meta.SucceededReason, "%s", msg.String())
	return ResultSuccess, nil
}
