CREATE TABLE "payouts" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"kind" text NOT NULL,
	"refund_of" text NOT NULL,
	"job_id" uuid,
	"amount_sats" bigint NOT NULL,
	"invoice" text NOT NULL,
	"payment_hash" text NOT NULL,
	"state" text DEFAULT 'pending' NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"outcome_unknown" boolean DEFAULT false NOT NULL,
	"next_attempt_at" timestamp with time zone DEFAULT now() NOT NULL,
	"held_until" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"paid_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "ledger_entries" DROP CONSTRAINT "ledger_account";--> statement-breakpoint
DROP INDEX "jobs_refund_invoice_uq";--> statement-breakpoint
ALTER TABLE "invoices" ADD COLUMN "expires_at" timestamp with time zone DEFAULT now() + interval '1 hour' NOT NULL;--> statement-breakpoint
ALTER TABLE "stub_invoices" ADD COLUMN "preimage" text;--> statement-breakpoint
ALTER TABLE "stub_invoices" ADD COLUMN "expires_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "stub_invoices" ADD COLUMN "failure" text;--> statement-breakpoint
CREATE UNIQUE INDEX "payouts_payment_hash_uq" ON "payouts" USING btree ("payment_hash");--> statement-breakpoint
CREATE UNIQUE INDEX "payouts_refund_of_live_uq" ON "payouts" USING btree ("refund_of") WHERE "payouts"."state" <> 'failed';--> statement-breakpoint
CREATE INDEX "payouts_due_idx" ON "payouts" USING btree ("next_attempt_at") WHERE "payouts"."state" = 'pending';--> statement-breakpoint
CREATE INDEX "payouts_job_idx" ON "payouts" USING btree ("job_id");--> statement-breakpoint
CREATE INDEX "invoices_pending_expiry_idx" ON "invoices" USING btree ("expires_at") WHERE "invoices"."state" = 'pending';--> statement-breakpoint
-- Carry refunds recorded by the jobs table (before payouts existed) over, so none is paid twice or forgotten:
-- a paid one stays paid; one caught mid-payment ('paying') keeps its invoice with an unknown outcome, which only
-- a lookup may settle. (The old stub's payment hash of an invoice was sha256 of its text.)
INSERT INTO "payouts" ("kind", "refund_of", "job_id", "amount_sats", "invoice", "payment_hash", "state", "attempts", "outcome_unknown", "paid_at")
SELECT 'job_refund', j."work_payment_hash", j."id", r."refunded_sats", j."refund_invoice",
       coalesce(j."refund_payment_hash", encode(sha256(convert_to(j."refund_invoice", 'UTF8')), 'hex')),
       CASE WHEN j."refund_state" = 'paid' THEN 'paid' ELSE 'pending' END, 1, j."refund_state" <> 'paid',
       CASE WHEN j."refund_state" = 'paid' THEN j."updated_at" END
FROM "jobs" j JOIN "runs" r ON r."id" = j."run_id"
WHERE j."refund_state" <> 'none' AND j."refund_invoice" IS NOT NULL AND j."work_payment_hash" IS NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" DROP COLUMN "refund_state";--> statement-breakpoint
ALTER TABLE "jobs" DROP COLUMN "refund_invoice";--> statement-breakpoint
ALTER TABLE "jobs" DROP COLUMN "refund_payment_hash";--> statement-breakpoint
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_account" CHECK ("ledger_entries"."session_id" is not null or "ledger_entries"."job_id" is not null or "ledger_entries"."kind" in ('undeliverable_payment', 'undeliverable_refund_payout'));