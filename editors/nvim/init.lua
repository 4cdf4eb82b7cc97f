-- A minimal Neovim set-up for incdsl: filetype, highlighting and the language server.
-- Try it with: nvim -u editors/nvim/init.lua specs/googlenet.inc
-- (in your own config, the README's two lines are enough; this file also works on Neovim 0.7).
local here = debug.getinfo(1, "S").source:sub(2):match("(.*)/")
vim.opt.runtimepath:append(here)  -- syntax/incdsl.vim
vim.cmd("syntax on")
vim.cmd("autocmd BufRead,BufNewFile *.inc set filetype=incdsl")  -- vim.filetype.add, on Neovim 0.8+

local function start()
  local config = { name = "incdsl", cmd = { "incdsl", "lsp" }, root_dir = vim.fn.getcwd() }
  if vim.lsp.start then  -- Neovim 0.8 and later
    vim.lsp.start(config)
  else
    vim.lsp.buf_attach_client(0, vim.lsp.start_client(config))
  end
end
vim.api.nvim_create_autocmd("FileType", { pattern = "incdsl", callback = start })

-- Diagnostics at the end of their line, the hint joined to the message.
vim.diagnostic.config({
  virtual_text = { format = function(d) return (d.message:gsub("\n", "  ")) end },
  severity_sort = true,
})

-- Quieter colours for floating windows and the sign column than Neovim 0.7's defaults.
vim.cmd("highlight NormalFloat ctermbg=236 ctermfg=252 guibg=#303030 guifg=#d0d0d0")
vim.cmd("highlight FloatBorder ctermbg=236 ctermfg=244 guibg=#303030 guifg=#808080")
vim.cmd("highlight SignColumn ctermbg=NONE guibg=NONE")
vim.lsp.handlers["textDocument/hover"] = vim.lsp.with(vim.lsp.handlers.hover, { border = "rounded" })

-- K shows the hover, gd goes to a template's definition, <C-x><C-o> completes, gq formats.
vim.api.nvim_create_autocmd("FileType", {
  pattern = "incdsl",
  callback = function()
    vim.bo.omnifunc = "v:lua.vim.lsp.omnifunc"
    vim.keymap.set("n", "K", vim.lsp.buf.hover, { buffer = true })
    vim.keymap.set("n", "gd", vim.lsp.buf.definition, { buffer = true })
  end,
})
