// Package reconcilers reconciles the Flux source kinds into artifacts in
// the replicated store. Only the Raft leader reconciles: LeaderRunner
// starts a controller-runtime manager when this replica gains leadership
// and stops it when it loses it, and every Kubernetes write goes through a
// gate that closes the moment leadership is lost.
//
// The shape follows Flux's source-controller, one file per job:
//
//	conditions.go     the conditions each kind owns, feeds into Ready, and treats as negative
//	errors.go         typed errors carrying their reason and reporting policy
//	source.go         the Reconcile flow every kind shares (fetch, finalizer, suspend,
//	                  deletion, progress, storage check), with the kind's steps plugged in
//	chain.go          sub-reconcilers (storage, source, include, artifact) run in order
//	summarize.go      the one place Ready, Stalled and Reconciling are settled and status is patched
//	events.go         Kubernetes events (and notification-controller forwarding)
//	artifact.go       artifacts through storage.Storage only: store, status form, GC, delete
//	metrics.go        gotk_reconcile_duration_seconds
//	leaderclient.go   the leadership write gate
//	runner.go         LeaderRunner and the manager it builds
//	gitrepository.go  GitRepository, with git_include.go and git_verify.go (checkout, auth
//	                  and signatures: sources/git)
//	helmrepository.go HelmRepository (index fetching: sources/helm)
//	helmchart.go      HelmChart (chart fetching and building: sources/helm)
//	ocirepository.go  OCIRepository (registry pulls and layers: sources/oci)
//	bucket.go         Bucket (listing and fetching: sources/bucket)
//
// A kind's file holds its reconciler, its sourceKind (how source.go reads
// its spec and status) and its own steps; nothing shared is written again
// per kind.
//
// Artifacts are built by package archive and streamed into Storage.Store,
// which returns once a quorum committed them; only then does the status
// name the artifact, so any replica can serve the URL it holds.
package reconcilers
