-- The firmware a machine booted commissioning with (bios or uefi), copied out of the facts
-- JSON when commissioning stores it: planning reads every machine's firmware (layouts are GPT +
-- EFI or MBR, cloning needs the same boot method) without parsing every machine's facts.
-- Keep in step with ../sqlite/0012.
ALTER TABLE machines ADD COLUMN firmware TEXT;
UPDATE machines SET firmware = (facts::jsonb -> 'arch' ->> 'firmware')
 WHERE (facts::jsonb -> 'arch' ->> 'firmware') IN ('bios', 'uefi');
