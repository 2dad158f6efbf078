CREATE TABLE "invoices" (
	"payment_hash" text PRIMARY KEY NOT NULL,
	"purpose" text NOT NULL,
	"session_id" uuid,
	"job_id" uuid,
	"amount_sats" bigint NOT NULL,
	"payment_request" text NOT NULL,
	"state" text DEFAULT 'pending' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"paid_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "jobs" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"state" text DEFAULT 'awaiting_eval_payment' NOT NULL,
	"request" text NOT NULL,
	"run_id" uuid DEFAULT gen_random_uuid() NOT NULL,
	"eval_payment_hash" text NOT NULL,
	"work_payment_hash" text,
	"pricing" jsonb,
	"reason" text,
	"error_message" text,
	"refund_state" text DEFAULT 'none' NOT NULL,
	"refund_invoice" text,
	"refund_payment_hash" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "ledger_entries" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"session_id" uuid,
	"job_id" uuid,
	"run_id" uuid,
	"kind" text NOT NULL,
	"amount_sats" bigint NOT NULL,
	"payment_hash" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "ledger_account" CHECK ("ledger_entries"."session_id" is not null or "ledger_entries"."job_id" is not null)
);
--> statement-breakpoint
CREATE TABLE "run_events" (
	"run_id" uuid NOT NULL,
	"seq" integer NOT NULL,
	"type" text NOT NULL,
	"data" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "run_events_run_id_seq_pk" PRIMARY KEY("run_id","seq")
);
--> statement-breakpoint
CREATE TABLE "runs" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"kind" text NOT NULL,
	"session_id" uuid,
	"job_id" uuid,
	"state" text DEFAULT 'queued' NOT NULL,
	"request" text NOT NULL,
	"max_tokens" integer NOT NULL,
	"pricing" jsonb NOT NULL,
	"debited_sats" bigint DEFAULT 0 NOT NULL,
	"charged_sats" bigint DEFAULT 0 NOT NULL,
	"refunded_sats" bigint DEFAULT 0 NOT NULL,
	"input_tokens" integer DEFAULT 0 NOT NULL,
	"output_tokens" integer DEFAULT 0 NOT NULL,
	"result" text DEFAULT '' NOT NULL,
	"error" jsonb,
	"last_seq" integer DEFAULT 0 NOT NULL,
	"cancel_requested" boolean DEFAULT false NOT NULL,
	"lease_owner" text,
	"lease_expires_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone,
	"completed_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "sessions" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"token_hash" text NOT NULL,
	"state" text DEFAULT 'awaiting_payment' NOT NULL,
	"balance_sats" bigint DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_used_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	CONSTRAINT "sessions_balance_non_negative" CHECK ("sessions"."balance_sats" >= 0)
);
--> statement-breakpoint
CREATE TABLE "stub_invoices" (
	"payment_hash" text PRIMARY KEY NOT NULL,
	"payment_request" text NOT NULL,
	"direction" text NOT NULL,
	"amount_sats" bigint NOT NULL,
	"memo" text DEFAULT '' NOT NULL,
	"state" text DEFAULT 'pending' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"paid_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "invoices" ADD CONSTRAINT "invoices_session_id_sessions_id_fk" FOREIGN KEY ("session_id") REFERENCES "public"."sessions"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_entries_session_id_sessions_id_fk" FOREIGN KEY ("session_id") REFERENCES "public"."sessions"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "run_events" ADD CONSTRAINT "run_events_run_id_runs_id_fk" FOREIGN KEY ("run_id") REFERENCES "public"."runs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "runs" ADD CONSTRAINT "runs_session_id_sessions_id_fk" FOREIGN KEY ("session_id") REFERENCES "public"."sessions"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "invoices_session_idx" ON "invoices" USING btree ("session_id");--> statement-breakpoint
CREATE INDEX "invoices_job_idx" ON "invoices" USING btree ("job_id");--> statement-breakpoint
CREATE UNIQUE INDEX "jobs_run_uq" ON "jobs" USING btree ("run_id");--> statement-breakpoint
CREATE INDEX "jobs_state_idx" ON "jobs" USING btree ("state");--> statement-breakpoint
CREATE UNIQUE INDEX "jobs_refund_invoice_uq" ON "jobs" USING btree ("refund_invoice") WHERE "jobs"."refund_invoice" is not null;--> statement-breakpoint
CREATE INDEX "ledger_session_idx" ON "ledger_entries" USING btree ("session_id");--> statement-breakpoint
CREATE UNIQUE INDEX "ledger_run_kind_uq" ON "ledger_entries" USING btree ("run_id","kind") WHERE "ledger_entries"."run_id" is not null;--> statement-breakpoint
CREATE UNIQUE INDEX "ledger_payment_uq" ON "ledger_entries" USING btree ("payment_hash") WHERE "ledger_entries"."payment_hash" is not null;--> statement-breakpoint
CREATE UNIQUE INDEX "ledger_job_kind_uq" ON "ledger_entries" USING btree ("job_id","kind") WHERE "ledger_entries"."job_id" is not null;--> statement-breakpoint
CREATE INDEX "runs_session_created_idx" ON "runs" USING btree ("session_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "runs_live_idx" ON "runs" USING btree ("state","lease_expires_at") WHERE "runs"."state" in ('queued','executing');--> statement-breakpoint
CREATE INDEX "runs_completed_idx" ON "runs" USING btree ("completed_at") WHERE "runs"."completed_at" is not null;--> statement-breakpoint
CREATE UNIQUE INDEX "sessions_token_hash_uq" ON "sessions" USING btree ("token_hash");