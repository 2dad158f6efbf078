DROP INDEX "stream_slots_key_idx";--> statement-breakpoint
ALTER TABLE "stream_slots" ADD COLUMN "n" integer;--> statement-breakpoint
CREATE UNIQUE INDEX "stream_slots_key_n_uq" ON "stream_slots" USING btree ("key","n");